"""A trained model upstream: a Hugging Face model repository folder whose ``model-index``
``huggingface_hub`` reads back with the store's values, and a patch of pytorch-ood's registry
applied to its source distribution, from which ``load_model`` loads the run's weights."""

import hashlib
import json
import math
import textwrap
from pathlib import Path

import huggingface_hub as hub
import pytest
import torch
import upstream_sdist

from logitnorm_plugin.cli import main
from logitnorm_plugin.reporting import hf_card, pytorch_ood_patch
from logitnorm_plugin.store.results import STORE_FILE, ResultStore


@pytest.fixture(scope="module")
def results(run_dir, tmp_path_factory):
    from logitnorm_plugin.evaluation.engine import evaluate

    folder = tmp_path_factory.mktemp("results")
    evaluate([str(run_dir)], "digits", detectors=["msp", "logitnorm"],
             store=folder / STORE_FILE, progress=False)
    return folder


# -- Hugging Face model card ---------------------------------------------------------------------


def test_hf_card_reads_back_with_the_store_values(run_dir, results, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", "--model", str(run_dir), "--hf-card", str(out),
                 "--results", str(results)]) == 0
    assert "readme:" in capsys.readouterr().out
    card = hub.ModelCard.load(out / "README.md")
    evals = card.data.eval_results
    with ResultStore(results / STORE_FILE) as store:
        rows = store.rows(with_ids=True)
    assert rows  # the store holds this model's cells
    checked = 0
    for row in rows:
        for metric, (mtype, name) in hf_card.CARD_METRICS.items():
            found = [e for e in evals if e.metric_type == mtype and e.metric_config ==
                     row["Detector"] and e.dataset_type == row["Dataset"]]
            if row.get(metric) is None or not math.isfinite(row[metric]):
                assert not found
                continue
            assert len(found) == 1, (row["Detector"], row["Dataset"], metric)
            assert found[0].metric_value == row[metric]  # exact: the stored float
            assert found[0].metric_name == name
            assert found[0].dataset_config == row["Benchmark"]
            checked += 1
    assert checked >= len(rows) * 2
    # both FPR95 conventions, each under its own name
    names = {e.metric_name for e in evals}
    assert any("OOD positive" in n for n in names) and any("ID positive" in n for n in names)
    accuracy = [e for e in evals if e.metric_name == "ID accuracy"]
    assert [e.metric_value for e in accuracy] == [rows[0]["ACC"]]
    run_card = json.loads((run_dir / "model.json").read_text())
    trained = [e for e in evals if e.metric_type == "accuracy" and e.dataset_config is None]
    assert trained[0].metric_value == run_card["metrics"]["final_accuracy"]
    assert card.data.model_name == "digits-cnn/digits/logitnorm/s0"
    # the YAML came from huggingface_hub: rebuilding it gives the same text
    rebuilt = hub.ModelCardData(**card.data.to_dict()).to_yaml()
    assert rebuilt == card.data.to_yaml()
    # provenance of training and evaluation beside the card
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["training"] == run_card["provenance"]
    assert prov["evaluation"]["versions"]


def test_hf_weights_have_the_name_torch_hub_checks(run_dir, tmp_path):
    written = hf_card.write_hf_card(run_dir, tmp_path / "hf")
    weights = written["weights"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.name == f"digits-cnn-digits-logitnorm-s0-{digest[:8]}.pt"
    assert torch.hub.HASH_REGEX.search(weights.name).group(1) == digest[:8]
    # torch.hub downloads it (file:// URL) and checks the hash prefix of the name
    state = torch.hub.load_state_dict_from_url(
        weights.as_uri(), model_dir=str(tmp_path / "hub"), check_hash=True, progress=False)
    original = torch.load(run_dir / "model.pt", weights_only=True)
    assert state.keys() == original.keys()
    assert all(torch.equal(state[k], original[k]) for k in original)
    # a file whose bytes do not match its name is refused by torch.hub
    tampered = tmp_path / "bad" / weights.name
    tampered.parent.mkdir()
    tampered.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(RuntimeError, match="invalid hash value"):
        torch.hub.load_state_dict_from_url(tampered.as_uri(), model_dir=str(tmp_path / "h2"),
                                           check_hash=True, progress=False)
    # without --results the card holds the training run's accuracy only
    card = hub.ModelCard.load(written["readme"])
    assert [e.metric_type for e in card.data.eval_results] == ["accuracy"]


def test_hf_card_without_results_of_the_model_is_refused(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    with ResultStore(other / STORE_FILE) as store:
        store.register_config("c", {"benchmark": "digits", "protocol": "full",
                                    "ood_names": ["x"], "groups": {}})
        store.put({"Dataset": "x", "Detector": "msp", "AUROC": 0.5}, model_id="weights:0",
                  config_id="c", detector_id="msp")
    assert main(["export", "--model", str(run_dir), "--hf-card", str(tmp_path / "hf"),
                 "--results", str(other)]) == 2
    assert "holds no results of the model" in capsys.readouterr().err


# -- the registry patch --------------------------------------------------------------------------


def test_registry_patch_inserts_next_to_the_same_architecture_and_dataset():
    _, source = pytorch_ood_patch.installed_registry()
    digest = "0123456789abcdef" * 4
    snippet = textwrap.dedent(f'''\
        ModelEntry(
            key="wrn-40-2/cifar10/logitnorm/s9",
            arch="wrn-40-2",
            dataset="cifar10",
            arch_class="pytorch_ood.model.WideResNet",
            arch_kwargs={{"num_classes": 10}},
            url="https://example.org/x-0123456789abcdef.pt",
            sha256="{digest}",
        )
        ''')
    patched = pytorch_ood_patch.insert_entries(source, [("wrn-40-2", "cifar10", snippet)])
    keys = pytorch_ood_patch._keys(patched)
    position = keys.index("wrn-40-2/cifar10/logitnorm/s9")
    assert keys[position - 1].startswith("wrn-40-2/cifar10/")
    assert len(keys) == len(pytorch_ood_patch._keys(source)) + 1
    with pytest.raises(ValueError, match="already has a model"):
        pytorch_ood_patch.insert_entries(patched, [("wrn-40-2", "cifar10", snippet)])


def test_registry_patch_applies_to_the_sdist_and_loads_the_weights(run_dir, tmp_path, capsys):
    root = upstream_sdist.unpack_sdist(tmp_path / "src")
    patch = tmp_path / "registry.patch"
    upload = tmp_path / "upload"
    assert main(["export", "--model", str(run_dir), "--pytorch-ood-patch", str(patch),
                 "--weights-out", str(upload), "--url-prefix", upload.as_uri()]) == 0
    capsys.readouterr()
    text = patch.read_text()
    assert text.startswith(f"--- a/{pytorch_ood_patch.REGISTRY_PATH}\n"
                           f"+++ b/{pytorch_ood_patch.REGISTRY_PATH}\n")
    upstream_sdist.apply_patch(root, patch)
    key = "digits-cnn/digits/logitnorm/s0"
    empty_home = tmp_path / "torch_home"
    empty_home.mkdir()
    script = textwrap.dedent(f'''
        import torch
        from pytorch_ood.model import registry
        assert registry.__file__.startswith({str(root)!r}), registry.__file__
        entry = registry.get_model_info({key!r})
        assert entry.url.startswith("file://"), entry.url
        model = registry.load_model({key!r})
        weights = torch.load({str(run_dir / "model.pt")!r}, weights_only=True)
        loaded = model.state_dict()
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[k], weights[k]) for k in weights)
        assert {key!r} in registry.list_models(dataset="digits")
        print("loaded", len(weights), "tensors from", entry.url)
    ''')
    done = upstream_sdist.run_in_source(root, ["-c", script], tmp_path,
                                        TORCH_HOME=str(empty_home))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded" in done.stdout
    # downloaded into the empty TORCH_HOME under the entry's file name (hash checked)
    cached = list((empty_home / "hub" / "checkpoints").iterdir())
    assert [p.name for p in cached] == [key.replace("/", "-") + "-" + hashlib.sha256(
        (run_dir / "model.pt").read_bytes()).hexdigest()[:16] + ".pt"]


def test_several_runs_and_bad_combinations(run_dir, tmp_path, capsys):
    assert main(["export", "--model", str(run_dir), str(run_dir), "--key", "a/b"]) == 2
    assert "take one --model" in capsys.readouterr().err
    assert main(["export", "--model", str(run_dir), "--url", "https://x/y-0.pt",
                 "--pytorch-ood-patch", str(tmp_path / "p")]) == 2
    assert "--url-prefix" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--hf-card", str(tmp_path / "hf")]) == 2
    assert "goes with --model" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--format", "openood-leaderbord"]) == 2
    assert "closest: openood-leaderboard" in capsys.readouterr().err
    # the same run twice: one key registered twice is refused
    assert main(["export", "--model", str(run_dir), str(run_dir), "--pytorch-ood-patch",
                 str(tmp_path / "p")]) == 2
    assert "already has a model" in capsys.readouterr().err
    assert not Path(tmp_path / "p").exists()
