"""Errors a user can act on.

Every exception here derives from :class:`UserError`: the command line prints its message and
exits with status 2, without a traceback. Each also derives from the builtin a caller would
expect (``ValueError`` for a bad name or value, ``FileNotFoundError`` for missing data), so
library users can catch the usual types.
"""


class UserError(Exception):
    """Base of errors caused by the input, with a message that says how to fix it."""


class UnknownNameError(UserError, ValueError):
    """A name that no registry, dataset table or architecture table knows.

    :param kind: what was looked up, e.g. ``"detector"``
    :param name: the name asked for
    :param available: the names that exist
    :param closest: the closest existing name, if any is close
    """

    def __init__(self, kind: str, name: str, available, closest=None):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        self.closest = closest
        hint = f" Did you mean '{closest}'?" if closest else ""
        listing = ", ".join(self.available) if self.available else "(none installed)"
        plural = kind + ("es" if kind.endswith("s") else "s")
        super().__init__(f"Unknown {kind} '{name}'.{hint} Available {plural}: {listing}")


class MissingDataError(UserError, FileNotFoundError):
    """A dataset is not on disk; the message names the path and how to get it."""


class CorruptDataError(UserError, OSError):
    """A data file exists but cannot be read (truncated, damaged, not what its name says); the
    message names the file and how to replace it. An ``OSError``, as PIL's own errors are."""


class ConfigMismatchError(UserError, ValueError):
    """A run folder holds a run with another configuration than the one asked for."""


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ModelIntegrityError(UserError, ValueError):
    """A model file whose SHA-256 differs from the one its model card records."""


class IncompatibleResultsError(UserError, ValueError):
    """A results folder is missing, empty, damaged, or written by an incompatible version."""


class UntrustedFileError(UserError, ValueError):
    """A file asks for something this package never does for a file: build a class outside
    the closed table of architectures, unpickle Python objects, or write outside a folder."""


class FolderBusyError(UserError, RuntimeError):
    """Another process holds the lock of a folder this command writes to."""


class StorageError(UserError, OSError):
    """A file or folder cannot be written: permission denied, a file where a folder belongs,
    or no space left on the device."""


class UsageError(UserError, ValueError):
    """Arguments that cannot work together as given (e.g. two models with one label)."""


class DetectorArgumentsError(UserError, ValueError):
    """A detector's class refused the arguments it was given (e.g. ``knn(k=0)``, an argument
    name it does not take).

    :param label: the detector as given, with its arguments
    :param cause: the class's own ``TypeError`` or ``ValueError``
    """

    def __init__(self, label: str, cause: BaseException):
        self.label = label
        super().__init__(
            f"the detector {label} cannot be built with these arguments ({type(cause).__name__}"
            f": {one_line(str(cause), 200)}); see its class's parameters (`logitnorm-ood list "
            "detectors` names the class)"
        )


class UndefinedScoresError(UserError, ValueError):
    """A detector gave NaN outlier scores (its settings, e.g. a temperature of 0, or the
    model's weights make them undefined); the message names the detector, the model and the
    dataset. Scores of +inf or -inf are allowed: they rank as the most and least OOD."""


def one_line(text, limit: int = 400) -> str:
    """``text`` on one line (whitespace runs collapsed), cut at ``limit`` characters: for
    messages that quote another library's multi-line error."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class DetectorFitError(UserError, RuntimeError):
    """A detector could not be fitted on the benchmark's training split (e.g. SHE with a model
    that predicts no training image of some class correctly).

    :param key: the detector's store key in the evaluation
    :param name: the detector as given, with its arguments (``knn(k=0)``)
    :param cause: what its ``fit`` raised
    :param model: the model's label, if known
    """

    def __init__(self, key: str, name: str, cause: BaseException, model: str | None = None):
        self.key, self.name = key, name
        on = f" with the model {model!r}" if model is not None else ""
        super().__init__(
            f"the detector {name} could not be fitted on the benchmark's training split{on} "
            f"({type(cause).__name__}: {one_line(str(cause), 200)}); check its arguments, "
            "leave it out, or give it a better-trained model"
        )


class DetectorScoreError(UserError, RuntimeError):
    """A detector's own scoring call failed on a dataset (e.g. ``knn(k=0)``: scikit-learn
    refuses zero neighbours only when asked for them); the message names the detector with
    its arguments, the model and the dataset.

    :param label: the detector as given, with its arguments
    :param model: the model's label
    :param where: the dataset, as the message names it (``"the OOD set 'svhn'"``)
    :param cause: what its ``predict`` (or ``predict_logits``, ...) raised
    :param key: the detector's store key in the evaluation, if known (``bench --detectors
        all`` leaves that detector out)
    """

    def __init__(self, label: str, model: str, where: str, cause: BaseException,
                 key: str | None = None):
        self.label, self.key = label, key
        super().__init__(
            f"the detector {label} failed to score {where} with the model {model!r} "
            f"({type(cause).__name__}: {one_line(str(cause), 200)}); change its arguments or "
            "leave it out"
        )


def closest_match(name: str, candidates) -> "str | None":
    """The candidate most similar to ``name`` (``None`` if nothing is reasonably close)."""
    import difflib

    matches = difflib.get_close_matches(name.lower(), [c.lower() for c in candidates], 1, 0.5)
    if not matches:
        return None
    lowered = {c.lower(): c for c in candidates}
    return lowered[matches[0]]


class UnsupportedModelError(UserError, ValueError):
    """A model that :func:`logitnorm_plugin.registry.split.split_model` cannot split into the
    encoder,
    head and backbone that feature-based detectors take; the message names what is missing and
    the protocol that declares it."""


class MissingModelPartsError(UserError, ValueError):
    """A loss that declares ``model_parts`` (e.g. ELogitNorm's final layer) was built without
    them; the message names the parts and how to pass them
    (:func:`logitnorm_plugin.registry.split.build_loss`)."""
