"""Stamping each outgoing update with the privacy scope the club applied to it.

A club's ``local/privacy.json`` decides which filters its results pass through, whatever a
job asks for. Putting :class:`ScopeStamp` last in each scope lets the server record, per
update, which of the club's policies was in force: an audit fact, not a claim by the job.
"""

from __future__ import annotations

from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

SCOPE_HEADER = "fitfed_privacy_scope"


class ScopeStamp(Filter):
    """Marks a task result with the name of the privacy scope whose filters it went through.

    Args:
        scope: the scope's name, as in the club's privacy.json.
    """

    def __init__(self, scope: str):
        super().__init__()
        if not scope:
            raise ValueError("scope must name the privacy scope this filter belongs to, got an empty string")
        self.scope = scope

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Set the scope header; the data itself is untouched."""
        shareable.set_header(SCOPE_HEADER, self.scope)
        return shareable
