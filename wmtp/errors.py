"""User-facing errors: each carries one clear line naming the key, file or file:line at fault.

The CLI prints `str(error)` without a traceback and exits with status 2.
"""


class WmtpError(Exception):
    """Base class for errors caused by bad input (spec, override, path, checkpoint, data line)."""


class CheckpointError(WmtpError):
    """A model directory or checkpoint file is missing, corrupt, or disagrees with its params."""


class EvalError(WmtpError):
    """Bad evaluation input: a samples or benchmark file line, an option (k > n, …), a sandbox limit."""


class RuleError(ValueError):
    """A rule across fields is broken; raised by a model validator, it names the key it blames.

    `key` is relative to the model whose validator raises it (`w_min` in TDSection, `data.valid_samples`
    in StageSpec); `wmtp.train.config.format_validation_error` (a spec) and
    `wmtp.eval.options` (a command-line flag) print it after the model's own path: `td.w_min: …`. The
    message says what is expected and ends with the value(s) found, `(got …)`.
    """

    def __init__(self, key: str, message: str, related: tuple[str, ...] = ()):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.related = related  # the other keys the rule read (an override of one of them is named)
