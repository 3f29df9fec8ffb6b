"""The one root of errors a user can fix: a bad recipe, a wrong path, a folder that is not ours.

The CLI prints any :class:`UserError` as one line and exits with status 2; anything else is a bug
and keeps its traceback. Each module's own error class derives from it (and from the built-in
class it always was, so existing ``except ValueError`` code keeps working).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message says what was wrong and, where there is one, the fix."""
