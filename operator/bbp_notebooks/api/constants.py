"""Names every layer agrees on: API group, version, kinds, finalizer, labels and the job tag."""

from __future__ import annotations

GROUP = "notebooks.bbp.epfl.ch"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

SESSION_KIND, SESSION_PLURAL = "NotebookSession", "notebooksessions"
PROFILE_KIND, PROFILE_PLURAL = "NotebookProfile", "notebookprofiles"
SITE_KIND, SITE_PLURAL = "SlurmSite", "slurmsites"

FINALIZER = f"{GROUP}/cancel-slurm-job"
ANNOTATION_PREFIX = GROUP
LABEL_PREFIX = GROUP
# Comma-separated hub groups of a session's user, set by the spawner, read by profile checks.
GROUPS_ANNOTATION = f"{ANNOTATION_PREFIX}/groups"

# A Slurm job belongs to a session of an installation when its name is
# JOB_NAME_PREFIX + <installation id> + '-' + <session uid>.
# Job names are visible to every user of the cluster, so the tag carries nothing secret.
JOB_NAME_PREFIX = "bbpnb-"

POSIX_USER_PATTERN = r"^[a-z_][a-z0-9_-]{0,31}$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

# Who created a session, as the API server's admission policy saw them (required equal to the
# requesting user, immutable). Only the hub may set GROUPS_ANNOTATION.
CREATED_BY_ANNOTATION = f"{ANNOTATION_PREFIX}/created-by"
# RBAC that grants running sessions as a POSIX user: verb RUNAS_VERB on the virtual resource
# POSIX_USERS_RESOURCE of API group GROUP, with resourceNames: [<user>].
RUNAS_VERB = "runas"
POSIX_USERS_RESOURCE = "posixusers"
