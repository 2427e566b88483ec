"""Is the admission policy that makes spec.user trustworthy in force? The operator runs sbatch as
spec.user and reads the groups annotation; only the chart's ValidatingAdmissionPolicy (who may run
as whom, decided by the API server) makes either mean anything, so sessions wait while it is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s

from bbp_notebooks.operator.kube import Kube

log = logging.getLogger(__name__)


def policy_problem(
    name: str, policy: Mapping[str, Any] | None, binding: Mapping[str, Any] | None
) -> str | None:
    """Why the policy ``name`` and its binding do not enforce anything, or None when they do."""
    if policy is None:
        return f"ValidatingAdmissionPolicy {name} does not exist"
    if binding is None:
        return f"ValidatingAdmissionPolicyBinding {name} does not exist"
    if (policy.get("spec") or {}).get("failurePolicy", "Fail") != "Fail":
        return f"ValidatingAdmissionPolicy {name} does not have failurePolicy Fail"
    spec = binding.get("spec") or {}
    if spec.get("policyName") != name:
        return (
            f"ValidatingAdmissionPolicyBinding {name} binds {spec.get('policyName')!r}, "
            f"not {name!r}"
        )
    if "Deny" not in (spec.get("validationActions") or []):
        return f"ValidatingAdmissionPolicyBinding {name} does not deny (validationActions)"
    return None


async def admission_policy_installed(kube: Kube, name: str) -> bool | None:
    """True when the ValidatingAdmissionPolicy ``name`` and its binding of the same name exist
    and deny what the policy refuses; False when either is missing or does not enforce; None
    when the API server could not be asked (an error, including 403: never read as "missing")."""
    try:
        policy, binding = await kube.read_admission_policy(name)
    except k8s.ApiException as error:
        log.warning("cannot read admission policy %s: %s %s", name, error.status, error.reason)
        return None
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
        log.warning("cannot read admission policy %s: %s", name, error)
        return None
    problem = policy_problem(name, policy, binding)
    if problem is not None:
        log.warning("admission policy not in force: %s", problem)
        return False
    return True
