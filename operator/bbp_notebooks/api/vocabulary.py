"""The words the operator, the hub and the tests share: condition types and reasons.

Every condition type and every reason in a status or an Event is a member here, so no second
spelling can disagree with the first. Reasons are CamelCase, as Kubernetes API conventions want.
"""

# ruff: noqa: S105  (reason names such as EnvironmentSecretNotFound are words, not secrets)
from __future__ import annotations

from enum import StrEnum


class ConditionType(StrEnum):
    # NotebookSession
    SUBMITTED = "Submitted"
    RUNNING = "Running"
    READY = "Ready"
    SITE_REACHABLE = "SiteReachable"
    CREDENTIALS_VALID = "CredentialsValid"  # the user's Kerberos ticket, at GSSAPI sites
    # True while the job has time left and no extension was refused; EndingSoon is still True
    TIME_LIMIT = "TimeLimit"
    # PySpark profiles: the companion job's Spark cluster reported its master with all workers
    SPARK_READY = "SparkReady"
    # SlurmSite
    REACHABLE = "Reachable"
    JOBS_VISIBLE = "JobsVisible"  # False when many jobs vanish from the monitor's view at once


class Reason(StrEnum):
    # Submission
    JOB_SUBMITTED = "JobSubmitted"
    EXISTING_JOB_ADOPTED = "ExistingJobAdopted"
    SUBMISSION_REJECTED = "SubmissionRejected"
    ADMISSION_POLICY_MISSING = "AdmissionPolicyMissing"
    SUBMISSION_UNCONFIRMED = "SubmissionUnconfirmed"
    PLACED = "Placed"  # a `site: auto` session placed by one shard, for its site's shard
    # Refused before any job (phase InvalidSpec)
    UNKNOWN_PROFILE = "UnknownProfile"
    PROFILE_NOT_ALLOWED = "ProfileNotAllowed"
    UNKNOWN_SITE = "UnknownSite"
    SITE_NOT_ALLOWED = "SiteNotAllowed"
    ACCOUNT_REQUIRED = "AccountRequired"
    RESOURCES_EXCEED_PROFILE = "ResourcesExceedProfile"
    USER_NOT_ALLOWED = "UserNotAllowed"
    ENVIRONMENT_SECRET_NOT_FOUND = "EnvironmentSecretNotFound"
    ENVIRONMENT_SECRET_NOT_OWNED = "EnvironmentSecretNotOwned"
    # Reaching the site
    SITE_ANSWERED = "SiteAnswered"
    SITE_UNAVAILABLE = "SiteUnavailable"
    CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
    LOGIN_REFUSED = "LoginRefused"
    HOST_KEY_MISMATCH = "HostKeyMismatch"
    POLLED = "Polled"
    ALL_JOBS_VISIBLE = "AllJobsVisible"
    MANY_JOBS_MISSING = "ManyJobsMissing"
    # The job, as Slurm reports it
    NOT_YET_OBSERVED = "NotYetObserved"
    JOB_PENDING = "JobPending"
    JOB_RUNNING = "JobRunning"
    ENDPOINT_REPORTED = "EndpointReported"
    WAITING_FOR_ENDPOINT = "WaitingForEndpoint"
    JOB_ENDED = "JobEnded"
    JOB_VANISHED = "JobVanished"
    UNRECOGNISED_JOB_STATE = "UnrecognisedJobState"
    # How a job ended
    JOB_COMPLETED = "JobCompleted"
    JOB_CANCELLED = "JobCancelled"
    JOB_TIME_LIMIT_REACHED = "JobTimeLimitReached"
    JOB_FAILED = "JobFailed"
    NODE_FAIL = "NodeFail"
    OUT_OF_MEMORY = "OutOfMemory"
    BOOT_FAIL = "BootFail"
    DEADLINE_REACHED = "DeadlineReached"
    PREEMPTED = "Preempted"
    REVOKED = "Revoked"
    # The Spark cluster (SparkReady; Ready=False WaitingForSpark while the notebook waits)
    SPARK_JOB_NOT_SUBMITTED = "SparkJobNotSubmitted"
    SPARK_JOB_PENDING = "SparkJobPending"
    SPARK_STARTING = "SparkStarting"
    SPARK_CLUSTER_REPORTED = "SparkClusterReported"
    SPARK_CLUSTER_ENDED = "SparkClusterEnded"
    WAITING_FOR_SPARK = "WaitingForSpark"
    # The user's Kerberos ticket (CredentialsValid)
    TICKET_VALID = "TicketValid"
    TICKET_RENEWED = "TicketRenewed"
    TICKET_MISSING = "TicketMissing"
    TICKET_PRINCIPAL_MISMATCH = "TicketPrincipalMismatch"
    TICKET_NOT_RENEWABLE = "TicketNotRenewable"
    TICKET_EXPIRED = "TicketExpired"
    # The job's time limit (TimeLimit)
    TIME_REMAINING = "TimeRemaining"
    ENDING_SOON = "EndingSoon"
    EXTENDED = "Extended"
    EXTENSION_REFUSED = "ExtensionRefused"
    # Deleting a session (Warning Events)
    SITE_GONE = "SiteGone"
    CANCEL_ABANDONED = "CancelAbandoned"
    # The poll (Warning Events)
    DUPLICATE_JOB_CANCELLED = "DuplicateJobCancelled"
