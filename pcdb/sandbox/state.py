"""The sandbox's state file (``<root>/state.json``), typed.

What it records: the servers (HA nodes, the replica, restored throw-away servers) with their
ports, roles and timelines; the intent of a topology change under way (a failover, a rejoin),
written before the change so that the next run finishes or undoes it; the events; where the
binaries and the root came from. The JSON keeps the layout of earlier versions: a sandbox made
by an earlier pcdb of the same STATE_VERSION is read as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

STATE_VERSION = 1


@dataclass
class NodeInfo:
    """One server of the topology: node1, node2 (the HA pair) or the replica."""

    port: int
    role: str                     # primary | standby | replica | promoted
    timeline: int | None = 1


@dataclass
class RestoreInfo:
    """A restored (throw-away) server: registered before it is made, so a kill leaves it findable."""

    port: int
    backup: str
    target_time: str | None = None
    created_at: str | None = None
    bindir: str | None = None         # another major's binaries, once pg_upgrade made it that major


@dataclass
class FailoverIntent:
    """A failover under way: written before the old primary is stopped."""

    old: str
    new: str
    mode: str
    since: str
    op: str = "failover"


@dataclass
class RejoinStep:
    """A former primary being rewound into a standby: the step reached (rewinding | rewound)."""

    node: str
    step: str
    since: str


@dataclass
class SandboxState:
    env: str
    version: int = STATE_VERSION
    created_at: str | None = None
    bindir: str | None = None
    root_created_by_pcdb: bool | None = None
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    restores: dict[str, RestoreInfo] = field(default_factory=dict)
    backups: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    intent: FailoverIntent | None = None
    rejoin: RejoinStep | None = None
    # The stand-in for the application's DNS record: "primary" (the HA pair) or "replica" (the
    # read replica a real region failover promoted, which then is the service's primary).
    application: str = "primary"
    # Who promoted the replica: "real" (a real region failover, never undone by a drill's
    # cleanup) or a drill's id; None when it is a replica (or an earlier pcdb promoted it).
    replica_promotion: str | None = None
    # A major version upgrade under way (pcdb/sandbox/upgrades.py): written before anything stops.
    upgrade: dict | None = None
    other: dict = field(default_factory=dict)     # keys this pcdb does not use, kept as they were

    @classmethod
    def from_json(cls, data: dict) -> SandboxState:
        known = {f.name for f in fields(cls)} - {"other"}
        intent = data.get("intent")
        rejoin = data.get("rejoin")
        return cls(
            env=data.get("env", ""), version=data.get("version", STATE_VERSION), created_at=data.get("created_at"),
            bindir=data.get("bindir"), root_created_by_pcdb=data.get("root_created_by_pcdb"),
            nodes={n: NodeInfo(**i) for n, i in (data.get("nodes") or {}).items()},
            restores={n: RestoreInfo(**i) for n, i in (data.get("restores") or {}).items()},
            backups=list(data.get("backups") or []), events=list(data.get("events") or []),
            intent=FailoverIntent(**intent) if intent else None, rejoin=RejoinStep(**rejoin) if rejoin else None,
            application=data.get("application", "primary"), replica_promotion=data.get("replica_promotion"),
            upgrade=data.get("upgrade"),
            other={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "other"}
        for key in ("intent", "rejoin", "root_created_by_pcdb", "replica_promotion", "upgrade"):
            if out[key] is None:
                del out[key]                      # absent, as earlier versions wrote it
        if out["application"] == "primary":
            del out["application"]
        return {**self.other, **out}

    def port_taken(self) -> set[int]:
        return {n.port for n in self.nodes.values()} | {r.port for r in self.restores.values()}

    def role_of(self, name: str) -> str | None:
        info = self.nodes.get(name)
        return info.role if info else None
