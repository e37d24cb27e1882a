"""Errors of use: one line that names the file, the line and the fix; exit code 3."""

from __future__ import annotations


class AuditorError(Exception):
    """Raised for bad input a person can fix; the CLI prints it as one line and exits 3."""

    exit_code = 3

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, fix: str | None = None):
        self.file = file
        self.line = line
        self.fix = fix
        self.reason = message
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        hint = f" (fix: {fix})" if fix else ""
        super().__init__(f"{where}{message}{hint}")
