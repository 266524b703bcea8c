"""Moltbook's answers as text for the model: posts, comments, search results and submolts
as short lines, the rest as compact JSON; everything cut to OUTPUT_LIMIT characters.

The list shapes vary in what the docs and clients show ({"posts": [...]}, {"data": [...]},
{"results": [...]}, a bare list under "data"), so each renderer looks in those places."""

from __future__ import annotations

import json
from typing import Any

OUTPUT_LIMIT = 16_000
PREVIEW = 300


def cut(text: str, limit: int = OUTPUT_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} characters cut]"


def as_json(data: Any) -> str:
    return cut(json.dumps(_without_success(data), indent=1, ensure_ascii=False))


def posts(data: dict[str, Any]) -> str:
    items = _list(data, "posts", "data", "results")
    lines = [_post_line(p) for p in items if isinstance(p, dict)]
    if data.get("has_more") and data.get("next_cursor"):
        lines.append(f"(more: cursor {data['next_cursor']})")
    return cut("\n".join(lines) or "(no posts)")


def post_with_comments(post_data: dict[str, Any], comments_data: dict[str, Any]) -> str:
    post = post_data.get("post") if isinstance(post_data.get("post"), dict) else post_data
    assert isinstance(post, dict)
    head = [_post_line(post, preview=False)]
    if post.get("url"):
        head.append(f"link: {post['url']}")
    head.append(str(post.get("content") or ""))
    comments = _list(comments_data, "comments", "data", "results")
    lines = ["", f"comments ({len(comments)}):"] if comments else ["", "(no comments)"]
    for comment in comments:
        _comment_lines(comment, 0, lines)
    return cut("\n".join(head + lines))


def search(data: dict[str, Any]) -> str:
    lines = []
    for hit in _list(data, "results", "data"):
        if not isinstance(hit, dict):
            continue
        kind = hit.get("type", "post")
        where = f"post {hit.get('post_id') or hit.get('id')}"
        if kind == "comment":
            where = f"comment {hit.get('id')} on post {hit.get('post_id')}"
        title = f" {hit['title']!r}" if hit.get("title") else ""
        similarity = hit.get("similarity")
        score = f" similarity {similarity:.2f}" if isinstance(similarity, int | float) else ""
        lines.append(f"- {where}{title} by {_name(hit.get('author'))}{score}: "
                     f"{_preview(hit.get('content'))}")
    return cut("\n".join(lines) or "(nothing found)")


def submolts(data: dict[str, Any]) -> str:
    if isinstance(data.get("submolt"), dict):
        return as_json(data)
    lines = []
    for item in _list(data, "submolts", "data", "results"):
        if not isinstance(item, dict):
            continue
        members = item.get("subscriber_count", item.get("member_count"))
        count = f", {members} members" if members is not None else ""
        lines.append(f"- m/{item.get('name')} ({item.get('display_name') or item.get('name')}"
                     f"{count}): {_preview(item.get('description'), 160)}")
    return cut("\n".join(lines) or "(no submolts)")


def _post_line(post: dict[str, Any], preview: bool = True) -> str:
    votes = post.get("upvotes", post.get("score", 0))
    down = post.get("downvotes")
    tally = f"+{votes}" + (f"/-{down}" if down else "")
    comments = post.get("comment_count", post.get("comments_count"))
    text = f" {post.get('id')} {post.get('title')!r} in m/{_name(post.get('submolt'))} by " \
           f"{_name(post.get('author') or post.get('author_name'))} ({tally}"
    text += f", {comments} comments)" if comments is not None else ")"
    if preview and post.get("content"):
        text += f": {_preview(post.get('content'))}"
    return "-" + text


def _comment_lines(comment: Any, depth: int, lines: list[str]) -> None:
    if not isinstance(comment, dict) or depth > 6:
        return
    lines.append(f"{'  ' * depth}- {comment.get('id')} {_name(comment.get('author'))} "
                 f"(+{comment.get('upvotes', 0)}): {_preview(comment.get('content'), 1000)}")
    replies = comment.get("replies")
    for reply in replies if isinstance(replies, list) else []:  # the server's: any shape
        _comment_lines(reply, depth + 1, lines)


def _list(data: dict[str, Any], *keys: str) -> list[Any]:
    for key in keys:
        value = data.get(key)
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            for inner in keys:
                if isinstance(value.get(inner), list):
                    return list(value[inner])
    return []


def _name(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name") or value.get("display_name") or "?")
    return str(value) if value else "?"


def _preview(value: Any, limit: int = PREVIEW) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _without_success(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: v for k, v in data.items() if k != "success"}
    return data
