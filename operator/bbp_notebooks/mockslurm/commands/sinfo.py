"""sinfo: partitions and node states, grouped the way sinfo groups them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bbp_notebooks.mockslurm.cluster import Node, Partition
from bbp_notebooks.mockslurm.commands.base import CONNECT_FAILURE, Context, parse_options
from bbp_notebooks.mockslurm.formats import compress_hostlist, fit, sinfo_time_limit
from bbp_notebooks.mockslurm.getopt import Arg, Option

R = Arg.REQUIRED
OPTIONS = [
    Option("all", "a", ("all",)),
    Option("dead", "d", ("dead",)),
    Option("exact", "e", ("exact",)),
    Option("noheader", "h", ("noheader",)),
    Option("iterate", "i", ("iterate",), R),
    Option("long", "l", ("long",)),
    Option("clusters", "M", ("clusters", "cluster"), R),
    Option("nodes", "n", ("nodes",), R),
    Option("node", "N", ("Node",)),
    Option("format", "o", ("format",), R),
    Option("format_long", "O", ("Format",), R),
    Option("partition", "p", ("partition",), R),
    Option("responding", "r", ("responding",)),
    Option("list_reasons", "R", ("list-reasons",)),
    Option("summarize", "s", ("summarize",)),
    Option("sort", "S", ("sort",), R),
    Option("states", "t", ("states",), R),
    Option("verbose", "v", ("verbose",)),
    Option("version", "V", ("version",)),
    Option("help", None, ("help",)),
    Option("usage", None, ("usage",)),
]

DEFAULT_FORMAT = "%#P %.5a %.10l %.6D %.6t %N"
SUMMARIZE_FORMAT = "%#P %.5a %.10l %.16F  %N"
NODE_FORMAT = "%#N %.6D %#P %6t"
LONG_STATE = {"idle": "idle", "mix": "mixed", "alloc": "allocated", "down*": "down*"}


@dataclass
class Group:
    partition: Partition
    nodes: list[Node]
    default: bool


def _range(values: list[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}+"


def _counts(group: Group) -> str:
    alloc = sum(1 for n in group.nodes if not n.down and n.alloc_cpus > 0)
    idle = sum(1 for n in group.nodes if not n.down and n.alloc_cpus == 0)
    other = sum(1 for n in group.nodes if n.down)
    return f"{alloc}/{idle}/{other}/{len(group.nodes)}"


def _cpus(group: Group) -> str:
    alloc = sum(n.alloc_cpus for n in group.nodes if not n.down)
    idle = sum(n.cpus - n.alloc_cpus for n in group.nodes if not n.down)
    other = sum(n.cpus for n in group.nodes if n.down)
    return f"{alloc}/{idle}/{other}/{sum(n.cpus for n in group.nodes)}"


def _state(group: Group) -> str:
    states = {n.state() for n in group.nodes}
    return states.pop() if len(states) == 1 else "mix"


FIELDS: dict[str, tuple[str, Callable[[Group], str]]] = {
    "a": ("AVAIL", lambda g: "up"),
    "c": ("CPUS", lambda g: _range([n.cpus for n in g.nodes])),
    "C": ("CPUS(A/I/O/T)", _cpus),
    "D": ("NODES", lambda g: str(len(g.nodes))),
    "E": ("REASON", lambda g: "none"),
    "f": ("AVAIL_FEATURES", lambda g: "(null)"),
    "F": ("NODES(A/I/O/T)", _counts),
    "G": ("GRES", lambda g: "(null)"),
    "l": ("TIMELIMIT", lambda g: sinfo_time_limit(g.partition.max_time)),
    "L": (
        "DEFAULTTIME",
        lambda g: (
            "n/a"
            if g.partition.default_time == g.partition.max_time
            else sinfo_time_limit(g.partition.default_time)
        ),
    ),
    "m": ("MEMORY", lambda g: _range([n.memory_mb for n in g.nodes])),
    "N": ("NODELIST", lambda g: compress_hostlist([n.name for n in g.nodes])),
    "P": ("PARTITION", lambda g: g.partition.name + ("*" if g.default else "")),
    "R": ("PARTITION", lambda g: g.partition.name),
    "s": ("JOB_SIZE", lambda g: "1-infinite"),
    "t": ("STATE", _state),
    "T": ("STATE", lambda g: LONG_STATE.get(_state(g), _state(g))),
}
GROUPING = {"t": "state", "T": "state", "c": "cpus", "m": "memory"}


@dataclass
class Column:
    letter: str
    width: int
    right: bool
    auto: bool
    suffix: str


def _parse_format(fmt: str) -> tuple[str, list[Column]]:
    position = fmt.find("%")
    if position == -1:
        return fmt, []
    prefix, body = fmt[:position], fmt[position:]
    columns: list[Column] = []
    for token in body.split("%"):
        if not token:
            continue
        index = 0
        right = token[0] == "."
        if right:
            index = 1
        auto = index < len(token) and token[index] == "#"
        if auto:
            index += 1
        digits = ""
        while index < len(token) and token[index].isdigit():
            digits += token[index]
            index += 1
        letter = token[index] if index < len(token) else ""
        columns.append(Column(letter, int(digits or 0), right, auto, token[index + 1 :]))
    return prefix, columns


async def main(ctx: Context, argv: list[str]) -> int:
    parsed = parse_options(ctx, "sinfo", argv, OPTIONS, "[OPTIONS]")
    if isinstance(parsed, int):
        return parsed
    settings, positional = parsed
    if positional:
        ctx.err(f"sinfo: error: Unrecognized option: {positional[0]}\n")
        return 1
    node_oriented = "node" in settings
    if "format" in settings:
        fmt = settings["format"] or ""
    elif "summarize" in settings:
        fmt = SUMMARIZE_FORMAT
    elif node_oriented:
        fmt = NODE_FORMAT
    else:
        fmt = DEFAULT_FORMAT
    if not await ctx.contact_controller():
        ctx.err(f"slurm_load_partitions: {CONNECT_FAILURE}\n")
        return 1
    cluster = ctx.cluster
    wanted_partitions = (
        {p for p in (settings["partition"] or "").split(",") if p}
        if "partition" in settings
        else None
    )
    wanted_states = (
        {s.lower() for s in (settings["states"] or "").split(",") if s}
        if "states" in settings
        else None
    )
    prefix, columns = _parse_format(fmt)
    keys = {GROUPING[c.letter] for c in columns if c.letter in GROUPING}
    if "summarize" in settings:
        keys = set()
    groups: list[Group] = []
    for partition in cluster.partitions.values():
        if wanted_partitions is not None and partition.name not in wanted_partitions:
            continue
        members = [cluster.nodes[name] for name in partition.nodes]
        if wanted_states is not None:
            members = [n for n in members if _state_wanted(n, wanted_states)]
        if "responding" in settings:
            members = [n for n in members if not n.down]
        if "dead" in settings:
            members = [n for n in members if n.down]
        default = partition.name == cluster.default_partition
        if node_oriented:
            groups.extend(Group(partition, [node], default) for node in members)
            continue
        buckets: dict[tuple[object, ...], list[Node]] = {}
        for node in members:
            bucket = tuple(
                node.state() if k == "state" else node.cpus if k == "cpus" else node.memory_mb
                for k in sorted(keys)
            )
            buckets.setdefault(bucket, []).append(node)
        if not buckets and wanted_states is None:
            continue
        groups.extend(Group(partition, nodes, default) for nodes in buckets.values())
    lines: list[str] = []
    widths = _auto_widths(columns, groups)
    if "noheader" not in settings:
        lines.append(_render(prefix, columns, widths, None))
    lines.extend(_render(prefix, columns, widths, group) for group in groups)
    if lines:
        ctx.out("\n".join(lines) + "\n")
    return 0


def _state_wanted(node: Node, states: set[str]) -> bool:
    state = node.state().rstrip("*")
    aliases = {"alloc": {"alloc", "allocated"}, "mix": {"mix", "mixed"}, "idle": {"idle"},
               "down": {"down"}}  # fmt: skip
    return bool(aliases.get(state, {state}) & states)


def _auto_widths(columns: list[Column], groups: list[Group]) -> list[int]:
    widths = []
    for column in columns:
        if column.auto and column.letter in FIELDS:
            header, function = FIELDS[column.letter]
            values = [function(g) for g in groups]
            widths.append(max([len(header)] + [len(v) for v in values]))
        else:
            widths.append(column.width)
    return widths


def _render(prefix: str, columns: list[Column], widths: list[int], group: Group | None) -> str:
    parts = [prefix]
    for column, width in zip(columns, widths, strict=True):
        if column.letter not in FIELDS:
            parts.append("%" + column.letter + column.suffix)
            continue
        header, function = FIELDS[column.letter]
        value = header if group is None else function(group)
        parts.append(fit(value, width, column.right, column.letter != "N"))
        parts.append(column.suffix)
    return "".join(parts)
