"""The slim forms of the per-tag models (issue 11) behave like the models they replace."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime

import pytest

from audit.errors import InvalidDigestError
from audit.models import Digest, Verdict
from audit.records import TagState, TrustedImage

HEX = "ab" * 32
RECORDED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def trusted(tag: str, **fields: object) -> TrustedImage:
    values: dict[str, object] = {
        "registry": "ghcr.io",
        "repository": "org/app",
        "tag": tag,
        "digest": f"sha256:{HEX}",
        "platforms": {"linux/amd64": f"sha256:{'cd' * 32}"},
        "source": "https://ci.example/run/1",
        "recorded_at": RECORDED_AT,
    }
    return TrustedImage.model_validate(values | fields)


def test_a_digest_is_its_canonical_text_and_still_a_digest() -> None:
    digest = Digest(algorithm="sha256", hex=HEX)
    assert digest == Digest(f"sha256:{HEX}") == Digest.parse(f" sha256:{HEX}\n")
    assert (digest.algorithm, digest.hex, digest.short) == ("sha256", HEX, f"sha256:{HEX[:12]}")
    assert str(digest) == f"sha256:{HEX}" and type(str(digest)) is str
    assert repr(digest) == f"Digest('sha256:{HEX}')"
    assert len({digest, Digest(f"sha256:{HEX}")}) == 1
    for copied in (copy.copy(digest), copy.deepcopy(digest), pickle.loads(pickle.dumps(digest))):
        assert copied == digest and type(copied) is Digest


@pytest.mark.parametrize("text", ["sha256:" + HEX.upper(), "sha256:" + HEX[:-1], "md5:" + HEX, HEX, ""])
def test_a_digest_is_validated_however_it_is_built(text: str) -> None:
    algorithm, _, hex_part = text.partition(":")
    with pytest.raises(InvalidDigestError):
        Digest(text)
    with pytest.raises(InvalidDigestError):
        Digest(algorithm=algorithm, hex=hex_part)
    with pytest.raises(InvalidDigestError):
        trusted("1.0", digest=text)


def test_digest_fields_validate_to_digests_and_serialise_as_strings() -> None:
    record = trusted("1.0", digest={"algorithm": "sha256", "hex": HEX})
    assert type(record.digest) is Digest and record.platforms is not None
    assert all(type(value) is Digest for value in record.platforms.values())
    dumped = record.model_dump()
    assert type(dumped["digest"]) is str and dumped["digest"] == f"sha256:{HEX}"
    assert TrustedImage.model_validate_json(record.model_dump_json()) == record
    assert pickle.loads(pickle.dumps(record)) == record
    with pytest.raises(ValueError, match="algorithm:hex"):
        trusted("1.0", digest=42)


def test_models_validated_with_the_same_fields_share_one_fields_set() -> None:
    first, second = trusted("1.0"), trusted("2.0")
    assert first.model_fields_set is second.model_fields_set
    assert trusted("3.0", commit="abc").model_fields_set is not first.model_fields_set


def test_a_copy_with_changes_never_changes_the_shared_set() -> None:
    state = TagState(
        registry="ghcr.io",
        repository="org/app",
        tag="1.0",
        last_verdict=Verdict.MATCH,
        first_seen=RECORDED_AT,
        last_seen=RECORDED_AT,
    )
    shared = set(state.model_fields_set)
    alerted = state.model_copy(update={"alert_count": 1, "alerted_verdict": Verdict.DRIFT})
    assert state.model_fields_set == shared
    assert alerted.model_fields_set == shared | {"alert_count", "alerted_verdict"}
    assert alerted.model_dump(exclude_unset=True).keys() == shared | {"alert_count", "alerted_verdict"}
    assert alerted.alert_count == 1 and state.alert_count == 0
