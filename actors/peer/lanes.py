"""The INBOX's deliveries handled in order per sender, different senders side by side.

A command can take long: a delegate's `completed` update has its deliverable fetched from
that delegate piece by piece (each piece waiting up to FETCH_TIMEOUT_S for an answer, for as
long as the delegate stays silent) and landed with git in the sandbox. Handled one at a
time, one member's slow commands held up every other member's wakes, reports and offers.
Here each sender (named by the command's subject, which the hub lets only that member
publish) has a lane of its own: its commands one after the other in the order the INBOX
handed them over, at most LANES senders at once and WAITING commands waiting in a lane. A
command that finds no room is put back in the INBOX for a while (a nak with a delay), never
dropped. While a command is held, waiting or being handled, the INBOX is told it is in
progress, so its ack wait never runs out and has it offered a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from protocol import subjects

LANES = 8  # senders whose commands are handled at once
WAITING = 16  # commands of one sender held waiting behind the one handled
BUSY_DELAY_S = 2.0  # a command that found no room is offered again after this long
KEEPALIVE_S = 20.0  # well inside the consumer's ack wait (inbox.ACK_WAIT_S)

Serve = Callable[[Msg], Awaitable[None]]


class Lanes:
    """Hands each delivery to `serve`, in order per sender; `serve` must not raise (but
    for cancellation)."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self._lanes: dict[str, deque[Msg]] = {}

    async def run(self, deliveries: Callable[[], Awaitable[Msg]],
                  left_over: Callable[[], list[Msg]]) -> None:
        """Take deliveries for ever; when cancelled, every command held (and those
        `left_over` returns: received, not yet taken) is handed back to the INBOX."""
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_alive())
                while True:
                    await self._take(await deliveries(), tasks)
        except asyncio.CancelledError:
            await hand_back([*self.held(), *left_over()])
            raise

    def held(self) -> list[Msg]:
        return [msg for lane in self._lanes.values() for msg in lane]

    async def _take(self, msg: Msg, tasks: asyncio.TaskGroup) -> None:
        route = subjects.route(msg.subject)
        sender = route.sender if route is not None and route.sender else ""
        lane = self._lanes.get(sender)
        if lane is None and len(self._lanes) < LANES:
            self._lanes[sender] = lane = deque([msg])
            tasks.create_task(self._work(sender, lane))
        elif lane is not None and len(lane) <= WAITING:
            lane.append(msg)
        else:
            with contextlib.suppress(Exception):  # not put back: offered after the ack wait
                await msg.nak(delay=BUSY_DELAY_S)

    async def _work(self, sender: str, lane: deque[Msg]) -> None:
        while lane:
            await self._serve(lane[0])
            lane.popleft()
        del self._lanes[sender]  # nothing awaited since the lane was seen empty

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_S)
            for msg in self.held():
                with contextlib.suppress(Exception):  # acked meanwhile, or disconnected
                    await msg.in_progress()


async def hand_back(msgs: list[Msg]) -> None:
    """Nak what a stopping actor will not handle, so the INBOX offers it again at once
    (after a restart) instead of after the ack wait; acked ones are unaffected."""
    try:
        async with asyncio.timeout(1.0):
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()
    except (TimeoutError, asyncio.CancelledError):
        pass
