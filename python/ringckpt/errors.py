"""The one exception ringckpt raises: what went wrong, and where."""

__all__ = ["Error", "CODES", "as_error"]

# The codes of ringckpt::ErrorCode, as Python names them.
CODES = ("invalid_argument", "not_found", "already_exists", "corrupt", "mismatch", "io",
         "cancelled")


class Error(Exception):
    """A ringckpt failure. `code` is one of CODES (callers branch on it), `where`
    the file, directory or state-dict key at fault, `message` what happened;
    str(error) reads "<where>: <message>", as the C++ Error's what() does."""

    def __init__(self, code: str, where: str, message: str):
        super().__init__(code, where, message)
        self.code = code
        self.where = where
        self.message = message

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def __repr__(self) -> str:
        return f"ringckpt.Error({self.code!r}, {self.where!r}, {self.message!r})"


def as_error(exception: BaseException) -> Error:
    """`exception` as a ringckpt.Error (its type and text for anything else):
    what a rank sends the others when it refuses a collective save or load."""
    if isinstance(exception, Error):
        return exception
    return Error("invalid_argument", "", f"{type(exception).__name__}: {exception}")
