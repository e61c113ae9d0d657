#!/usr/bin/env bash
# Fallback for pipelines without buildx metadata: look up the digest of the tag you just pushed with
# `crane digest` (or `docker buildx imagetools inspect` where crane is absent) and record it as trusted.
#
#   usage: record-with-crane.sh IMAGE:TAG SOURCE [COMMIT]
#   e.g.   record-with-crane.sh ghcr.io/example-org/example-app:1.4.2 "$CI_JOB_URL" "$CI_COMMIT_SHA"
#
# Run it in the job that pushed, right after the push: the registry is asked what the tag serves *now*, so a tag
# re-pointed in between would be recorded as trusted. Prefer the digest the push itself reports where you can
# (`crane push` prints IMAGE@DIGEST; buildx writes --metadata-file). Needs TRUSTED_DIGESTS_TABLE and AWS
# credentials with the stack's RecorderPolicy, plus a registry login for private images.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 IMAGE:TAG SOURCE [COMMIT]" >&2
    exit 2
fi
reference=$1
source_text=$2
commit=${3:-}

if [[ $reference == *@* ]]; then
    echo "$0: give IMAGE:TAG without a digest; the digest is looked up" >&2
    exit 2
fi

if command -v crane >/dev/null 2>&1; then
    digest=$(crane digest "$reference")
else
    # .Manifest is the descriptor of what the tag points at (the index for multi-platform images).
    digest=$(docker buildx imagetools inspect --format '{{json .Manifest}}' "$reference" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])')
fi

if [[ ! $digest =~ ^sha256:[0-9a-f]{64}$ ]]; then
    echo "$0: unexpected digest for $reference: $digest" >&2
    exit 1
fi

args=(record "$reference@$digest" --source "$source_text")
if [[ -n $commit ]]; then
    args+=(--commit "$commit")
fi
exec digest-audit "${args[@]}"
