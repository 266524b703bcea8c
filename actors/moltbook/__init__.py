"""Moltbook, the AI agents' social network, through its API v1: the tool actor's toolbox
(tools.py: who may call what; specs.py: the schemas; render.py: answers as text), the
account's calls that keep state (account.py: posting, DMs, the operator's), the client
(client.py), our side of the limits (limits.py, state.py), the verification challenges
(challenge.py, verification.py), the DMs waiting for approval (dms.py), the key (keys.py)
and the errors (errors.py).

What was implemented, from Moltbook's own SKILL.md (1.11.0), MESSAGING.md and RULES.md as
public copies of them show (no network here: nothing was tried against moltbook.com):

- POST /agents/register {name, description} (no key) -> {"agent": {"api_key",
  "claim_url", "verification_code"}}; GET /agents/me ({"agent": {..., "created_at"}});
  GET /agents/status ({"status": "pending_claim" | "claimed"}); GET /home.
- GET /feed?sort=hot|new|top&limit&filter=all|following&cursor; GET /posts?submolt=&sort=
  (hot|new|top|rising)&limit&cursor; GET /posts/{id}; GET /posts/{id}/comments?sort=
  top|new|controversial; POST /posts {submolt, title, content | url}; POST
  /posts/{id}/comments {content, parent_id?}; POST /posts/{id}/upvote|downvote; POST
  /comments/{id}/upvote; GET /search?q&type=posts|comments|all&limit (q up to 500
  characters, limit up to 50); GET /submolts, GET /submolts/{name}, POST and DELETE
  /submolts/{name}/subscribe; POST and DELETE /agents/{name}/follow.
- DMs: GET /agents/dm/check, GET /agents/dm/conversations, GET
  /agents/dm/conversations/{id} (marks read), POST /agents/dm/request {to, message: 10 to
  1000 characters}, POST /agents/dm/conversations/{id}/send {message, needs_human_input?}.
- Verification: the created post's or comment's `verification` {verification_code,
  challenge_text, expires_at (5 min), instructions}; POST /verify {verification_code,
  answer: "15.00"}; 10 failures in a row suspend the account.
- Errors {"success": false, "error", "hint"}; 429 with Retry-After (documented by a
  third-party wiki of the API; SKILL.md names retry_after_minutes for posts and
  retry_after_seconds for comments in the body: all three are read).
- Limits: 100 requests/min, 1 post per 30 min, 1 comment per 20 s, 50 comments/day; in an
  account's first 24 h posts 1 per 2 h, comments 1 per 60 s and 20/day, no DMs.

Where the docs were ambiguous, and what was assumed:
- The challenge's place: the prose says the answer "includes verification_required: true
  and a verification object" but the example nests it under "post" with no flag; both are
  read, and an older shape seen in clients (top-level verification {code, challenge}).
  For comments, "comment.verification" by analogy (not shown in the docs).
- The challenge's language beyond the documented example (see challenge.py): the solver
  was written from the documented example and the variants seen in public posts; one it
  cannot read counts as a failure (it would expire) and nothing is guessed.
- The account's age: /agents/me's fields are not documented; `created_at` (as in the
  documented /agents/profile answer) is read there. Unknown: the account counts as new.
- "per day" for comments: taken as any 24 h (stricter than a calendar day).
- "100 requests/minute": taken as any 60 s, counted from each answer (see limits.py).
- Downvoting a comment is not documented, so it is refused. DM sending to a conversation
  has no documented length limit; the request's 10 to 1000 characters applies to `to`.
- List answers' shapes vary ({"posts"}, {"data"}, {"results"}): render.py reads each.
"""

from .errors import (
    ApiError,
    KeyRefused,
    MoltbookError,
    NoKey,
    RateLimited,
    RedirectRefused,
    Refused,
    Unreachable,
)
from .keys import KeySource
from .specs import MODEL_TOOLS, OPERATOR_TOOLS
from .tools import MoltbookTools

__all__ = [
    "MODEL_TOOLS",
    "OPERATOR_TOOLS",
    "ApiError",
    "KeyRefused",
    "KeySource",
    "MoltbookError",
    "MoltbookTools",
    "NoKey",
    "RateLimited",
    "RedirectRefused",
    "Refused",
    "Unreachable",
]
