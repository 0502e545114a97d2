"""The names and values the Kubernetes API server accepts, checked before anything is written.

The rules are the API server's own (k8s.io/apimachinery/pkg/util/validation/validation.go:
IsDNS1123Label, IsDNS1035Label, IsQualifiedName, IsValidLabelValue); the JSON schemas of the
resources do not carry them, so a manifest that validates can still be rejected on apply.
"""

from __future__ import annotations

import re

from gpu_preflight.errors import InvalidInput

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # IsDNS1123Label
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # IsDNS1035Label
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # IsValidLabelValue
LABEL_MAX = 63  # DNS1123LabelMaxLength, LabelValueMaxLength
SUBDOMAIN_MAX = 253  # DNS1123SubdomainMaxLength
# A pool's name becomes part of resource names: "llm-" + pool, and LeaderWorkerSet's own
# StatefulSet/pod names append "-<group>-<worker>" to that (lws: pkg/utils/utils.go), so the pool
# keeps well under the 63 characters of a label.
POOL_NAME_MAX = 40
POOL_NAME_ACCEPTED = (
    f"a DNS-1035 label of at most {POOL_NAME_MAX} characters: lower-case letters, digits and "
    "'-', starting with a letter and ending with a letter or digit (e.g. h100-east)"
)


def is_dns1123_label(text: str) -> bool:
    return len(text) <= LABEL_MAX and DNS1123_LABEL.match(text) is not None


def is_dns1035_label(text: str) -> bool:
    return len(text) <= LABEL_MAX and DNS1035_LABEL.match(text) is not None


def is_subdomain(text: str) -> bool:
    return len(text) <= SUBDOMAIN_MAX and DNS1123_SUBDOMAIN.match(text) is not None


def is_label_value(text: str) -> bool:
    return len(text) <= LABEL_MAX and LABEL_VALUE.match(text) is not None


def check_pool_name(where: str, name: object) -> str:
    """A pool name usable inside every resource name derived from it (DNS-1035: it also names
    the LeaderWorkerSet and its Service), or InvalidInput naming the value."""
    if not isinstance(name, str) or not (
        len(name) <= POOL_NAME_MAX and DNS1035_LABEL.match(name) is not None
    ):
        shown = repr(name)[:80]
        raise InvalidInput(
            f"{where}: pool name {shown} is not valid. Accepted: {POOL_NAME_ACCEPTED}."
        )
    return name


def label_safe(text: str) -> str:
    """A label value made from free text (a GPU's product name): what GFD itself writes for
    nvidia.com/gpu.product is the NVML name with spaces as '-'; anything else outside the label
    alphabet becomes '-' too, and the result is cut to 63 characters."""
    out = re.sub(r"[^A-Za-z0-9_.-]", "-", text.strip().replace(" ", "-"))[:LABEL_MAX]
    return out.strip("-_.")
