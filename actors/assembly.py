"""Which actors an entity runs, built from its config: the daemon's composition root."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from entityd import Actor, Config, ConfigError, Supervision
from protocol import Status

from .coder import CoderActor
from .health import HealthActor
from .ledger.actor import LedgerActor
from .llm import LLM, LLMError, TokenBudget, build_llm
from .llm.budget import Budgets, Metered
from .llm.cost import ModelCost
from .memory import MemoryActor
from .orchestrator import OrchestratorActor
from .peer.actor import PeerActor
from .peer.policy import Trust
from .sandbox.cgroup import SharedLimits
from .services.actor import ServicesActor
from .tool import ToolActor
from .web.actor import WebActor
from .web.auth import LoginLinks
from .workspaces import Workspaces

ActorFactory = Callable[[], Actor]
# A ledger write waits for the stream up to this many times (appends the stream refused
# for a rival's entry, each retried): what the orchestrator's ledger tools wait for.
LEDGER_ATTEMPTS = 4


class SharedLLM:
    """One client for the orchestrator and the coder, built on first use, metered per
    turn against the budget of whoever pays for it: the operator's
    (llm.max_tokens_per_hour) or one peer's (peers.max_tokens_per_hour), never both.

    A missing key is not a startup error: the entity still serves status, memory and
    tools, and each goal gets a clear "no model" answer until the key is there.
    """

    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        self.config = config
        self.environ = environ
        self.budgets = Budgets(config.llm.max_tokens_per_hour, config.peers.max_tokens_per_hour)
        self._llm: LLM | None = None

    def __call__(self, payer: str = "") -> LLM:
        """The model for one turn paid for by `payer` ("": the operator)."""
        if self._llm is None:
            try:
                self._llm = build_llm(self.config.llm, environ=self.environ,
                                      workspace=self.config.workspace_dir, budget=None,
                                      metered=False)
            except ConfigError as exc:
                raise LLMError(str(exc)) from None
        return Metered(self._llm, self.budget(payer))

    def budget(self, payer: str = "") -> TokenBudget:
        return self.budgets.of(payer)

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        close: Any = getattr(llm, "aclose", None)
        if close is not None:
            await close()


def sandbox_limits(config: Config) -> SharedLimits:
    """The per-call limits of every sandbox of the daemon, detected once when first used."""
    return SharedLimits(config.sandbox.memory_mb * 1024 * 1024, config.sandbox.max_processes)


def standard_actors(config: Config, status: Callable[[], Status], llm: SharedLLM,
                    supervision: Supervision, limits: SharedLimits | None = None,
                    links: LoginLinks | None = None) -> dict[str, ActorFactory]:
    limits = limits or sandbox_limits(config)
    workspaces = Workspaces(config, limits)
    workspace = workspaces.own
    trust = Trust(config.trust, config.peers.default_trust)
    steps = config.llm.max_steps_per_turn
    cost = ModelCost.of(config.llm, config.prices)  # what each call's tokens cost
    actors: dict[str, ActorFactory] = {
        HealthActor.name: lambda: HealthActor(status),
        MemoryActor.name: lambda: MemoryActor(config.memory_path),
        ToolActor.name: lambda: ToolActor(config, limits),
        CoderActor.name: lambda: CoderActor(llm, workspaces, steps, cost),
        OrchestratorActor.name: lambda: OrchestratorActor(
            llm, steps, config.autonomy, config.peers, trust.allowed,
            goals_path=config.data_dir / "goals.sqlite3",
            ledger_timeout=LEDGER_ATTEMPTS * config.economy.append_timeout, cost=cost,
            a2a_agents=config.a2a.agents),
        PeerActor.name: lambda: PeerActor(config, workspaces, supervision),
        LedgerActor.name: lambda: LedgerActor(config),
        ServicesActor.name: lambda: ServicesActor(config, workspace),
    }
    if config.web.enabled:
        login_links = links or LoginLinks()
        actors[WebActor.name] = lambda: WebActor(config, login_links)
    return actors


class StandardAssembly:
    """The daemon's actors with what they share: one model client and the sandboxes'
    limits (entityd.daemon.Assembly)."""

    def __init__(self, config: Config, environ: Mapping[str, str]) -> None:
        self.config = config
        self.llm = SharedLLM(config, environ)
        self.links = LoginLinks()  # outlive a restart of the web actor
        self.limits = sandbox_limits(config)

    @property
    def sandbox(self) -> str:
        return self.limits.description

    def actors(self, status: Callable[[], Status],
               supervision: Supervision) -> dict[str, ActorFactory]:
        return standard_actors(self.config, status, self.llm, supervision, self.limits,
                               self.links)

    async def aclose(self) -> None:
        try:
            await self.llm.aclose()
        finally:
            self.limits.close()  # the empty parents of the sandboxes' cgroups
