"""The errors a user can fix, one type per kind of input: the command-line layer (slmrec/cli.py) prints them in
one line and exits 2, without importing the code that raises them."""


class DataError(ValueError):
    """Input data that cannot be used, with a message naming the file and the problem."""


class FlagError(ValueError):
    """A flag's value that cannot be used, named with the flag."""


class DamagedFile(ValueError):
    """A file of the project's (a record, a config, a run's metrics) that does not parse: named, with what to do."""


class CheckpointError(ValueError):
    """A run folder or checkpoint that is missing, damaged or of another model or dataset."""


class BackboneError(ValueError):
    """A base LM that cannot be found or loaded."""


class EmbeddingFileError(ValueError):
    """An item-embedding pickle that is missing, damaged or of another dataset."""


class NonFiniteError(ValueError):
    """A loss or a score that is NaN or infinite: training diverged, or an input holds non-finite values."""


EXPECTED = (
    BackboneError,
    CheckpointError,
    DamagedFile,
    DataError,
    EmbeddingFileError,
    FlagError,
    NonFiniteError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
)
