"""sacctmgr show assoc / show user: the accounts (projects) each user may charge."""

from __future__ import annotations

from bbp_notebooks.mockslurm.cluster import SLURM_VERSION
from bbp_notebooks.mockslurm.commands.base import Context
from bbp_notebooks.mockslurm.getopt import GetoptError, Option, parse

OPTIONS = [
    Option("noheader", "n", ("noheader",)),
    Option("parsable", "p", ("parsable",)),
    Option("parsable2", "P", ("parsable2",)),
    Option("immediate", "i", ("immediate",)),
    Option("quiet", "Q", ("quiet",)),
    Option("readonly", "r", ("readonly",)),
    Option("associations", "s", ("associations",)),
    Option("verbose", "v", ("verbose",)),
    Option("version", "V", ("version",)),
    Option("help", "h", ("help",)),
]

ASSOC_FIELDS = {
    "cluster": ("Cluster", 10),
    "account": ("Account", 10),
    "user": ("User", 10),
    "partition": ("Partition", 10),
    "share": ("Share", 9),
    "qos": ("QOS", 20),
    "defaultqos": ("Def QOS", 9),
    "grptres": ("GrpTRES", 13),
    "maxjobs": ("MaxJobs", 7),
    "maxwall": ("MaxWall", 11),
    "parentname": ("Par Name", 10),
}
ASSOC_DEFAULT = "Cluster,Account,User,Partition,Share,GrpTRES,MaxJobs,MaxWall,QOS,DefaultQOS"
USER_FIELDS = {
    "user": ("User", 10),
    "defaultaccount": ("Def Acct", 10),
    "admin": ("Admin", 9),
    "account": ("Account", 10),
    "cluster": ("Cluster", 10),
}
USER_DEFAULT = "User,DefaultAccount,Admin"


async def main(ctx: Context, argv: list[str]) -> int:
    try:
        options, positional = parse("sacctmgr", argv, OPTIONS)
    except GetoptError as error:
        ctx.err(f'{error}\nTry "sacctmgr --help" for more information\n')
        return 1
    keys = {key for key, _ in options}
    if "version" in keys:
        ctx.out(f"slurm {SLURM_VERSION}\n")
        return 0
    words = list(positional)
    if not words or words[0].lower() not in ("show", "list"):
        if words and words[0].lower() in ("add", "create", "modify", "update", "delete", "remove"):
            ctx.err(" Your user doesn't have privilege to perform this action\n")
            return 1
        ctx.err(f"sacctmgr: error: Invalid command: {' '.join(words) or '(none)'}\n")
        return 1
    if len(words) < 2:
        ctx.err("sacctmgr: error: No entity given\n")
        return 1
    entity = words[1].lower()
    conditions: dict[str, set[str]] = {}
    fmt: str | None = None
    for word in words[2:]:
        if word.lower() in ("where", "set"):
            continue
        key, has_value, value = word.partition("=")
        if not has_value:
            conditions.setdefault("name", set()).update(v for v in key.split(",") if v)
            continue
        key = key.lower()
        if key == "format":
            fmt = value
            continue
        key = {"users": "user", "accounts": "account", "clusters": "cluster",
               "partitions": "partition", "names": "name"}.get(key, key)  # fmt: skip
        conditions.setdefault(key, set()).update(v for v in value.split(",") if v)
    if not await ctx.contact_database("sacctmgr"):
        return 1
    cluster = ctx.cluster
    site = cluster.config.name
    rows: list[dict[str, str]] = []
    if entity.startswith("assoc"):
        fields, default = ASSOC_FIELDS, ASSOC_DEFAULT
        users = conditions.get("user") or conditions.get("name")
        for user in cluster.config.users:
            if users is not None and user.name not in users:
                continue
            for account in user.accounts:
                if "account" in conditions and account not in conditions["account"]:
                    continue
                rows.append(
                    {
                        "cluster": site,
                        "account": account,
                        "user": user.name,
                        "partition": "",
                        "share": "1",
                        "qos": "normal",
                        "defaultqos": "",
                        "grptres": "",
                        "maxjobs": "",
                        "maxwall": "",
                        "parentname": "",
                    }  # fmt: skip
                )
        if "cluster" in conditions and site not in conditions["cluster"]:
            rows = []
    elif entity.startswith("user"):
        fields, default = USER_FIELDS, USER_DEFAULT
        names = conditions.get("name") or conditions.get("user")
        for user in cluster.config.users:
            if names is not None and user.name not in names:
                continue
            default_account = user.default_account or (user.accounts[0] if user.accounts else "")
            rows.append({"user": user.name, "defaultaccount": default_account,
                         "admin": user.admin_level, "account": "", "cluster": ""})  # fmt: skip
    else:
        ctx.err(f"sacctmgr: error: Unknown option: {words[1]}\n")
        return 1
    columns: list[tuple[str, str, int]] = []
    for item in [i for i in (fmt or default).split(",") if i]:
        name, _, width = item.partition("%")
        spec = fields.get(name.lower())
        if spec is None:
            ctx.err(f"sacctmgr: error: Unknown field '{name}'\n")
            return 1
        columns.append((name.lower(), spec[0], int(width) if width.isdigit() else spec[1]))
    parsable = "parsable" in keys or "parsable2" in keys
    trailing = "|" if "parsable" in keys and "parsable2" not in keys else ""
    lines: list[str] = []
    if "noheader" not in keys:
        if parsable:
            lines.append("|".join(header for _, header, _ in columns) + trailing)
        else:
            lines.append(" ".join(_cell(header, width) for _, header, width in columns) + " ")
            lines.append(" ".join("-" * width for _, _, width in columns) + " ")
    for row in rows:
        if parsable:
            lines.append("|".join(row[key] for key, _, _ in columns) + trailing)
        else:
            lines.append(" ".join(_cell(row[key], width) for key, _, width in columns) + " ")
    if lines:
        ctx.out("\n".join(lines) + "\n")
    return 0


def _cell(value: str, width: int) -> str:
    if len(value) > width:
        value = value[: width - 1] + "+"
    return value.rjust(width)
