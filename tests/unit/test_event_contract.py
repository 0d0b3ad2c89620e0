"""The typed event contract (schema/contract.py) against the domain that emits the events, and against
its own history (no I/O).

- Every event the domain can emit has a Struct whose fields are exactly the envelope's ``data`` fields
  (the domain event's own, ``_hash`` dropped, ``_encrypted`` as ``has_``), and the domain's defaults are
  the Struct's: an event stored before a defaulted field existed still decodes.
- What the aggregates really emit decodes, and the exported JSON Schema is valid 2020-12 and accepts it.
- The evolution guard: ``event_contract_v1.json`` is the contract as released. A field removed, renamed or
  retyped (or a type removed) fails; a field added with a default passes. After adding fields or event
  types, record them with ``.venv/bin/python -m tests.unit.test_event_contract`` (it only adds to the
  snapshot: it refuses to rewrite what is there) and commit the snapshot with the change.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import re
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgspec
import pytest
from eventsourcing.domain import Aggregate, decorated_funcs
from jsonschema import Draft202012Validator

import domain
from domain.chats import Chat, Generation
from domain.identity import ApiKey, Invitation, User
from domain.knowledge import Document, KnowledgeBase
from domain.models import Model, Provider
from domain.quotas import QuotaPolicy
from schema.contract import (
    AGGREGATE_SUBJECTS,
    SCHEMA_VERSION,
    EventDataMismatch,
    UnknownEventType,
    contract_schema,
    decode_data,
    event_types,
    personal_fields,
    subject_fields,
)

SNAPSHOT = Path(__file__).with_name(f"event_contract_v{SCHEMA_VERSION}.json")
NOT_DATA = {"originator_id", "originator_version", "timestamp", "meta", "originator_topic", "originator_id_type"}


# --- what the domain emits -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DomainEvent:
    aggregate: str
    cls: type
    method: Callable[..., Any]
    """The decorated method whose arguments the event records (``__init__`` for a created event)."""


def domain_events() -> dict[str, DomainEvent]:
    """Every event class an aggregate in the ``domain`` package emits: the ``@event("Name")`` classes,
    not the bare ``Event``/``Created`` bases the library gives every aggregate."""
    found: dict[str, DomainEvent] = {}
    for info in pkgutil.iter_modules(domain.__path__):
        module = importlib.import_module(f"domain.{info.name}")
        for aggregate in vars(module).values():
            if not (inspect.isclass(aggregate) and issubclass(aggregate, Aggregate)) or aggregate.__module__ != module.__name__:
                continue
            for cls in vars(aggregate).values():
                if not inspect.isclass(cls) or cls in (aggregate.Event, aggregate.Created):
                    continue
                if cls in decorated_funcs:
                    method = decorated_funcs[cls]
                elif issubclass(cls, Aggregate.Created):
                    method = aggregate.__init__
                else:
                    continue
                assert cls.__name__ not in found, f"event type {cls.__name__} is emitted by two aggregates"
                found[cls.__name__] = DomainEvent(aggregate.__name__, cls, method)
    return found


def wire_name(name: str) -> str | None:
    """How a domain event's attribute appears in the envelope's ``data`` (None: it never leaves)."""
    if name.endswith("_hash"):
        return None
    if name.endswith("_encrypted"):
        return f"has_{name.removesuffix('_encrypted')}"
    return name


def wire_fields(event: DomainEvent) -> set[str]:
    names = (f.name for f in dataclasses.fields(event.cls) if f.name not in NOT_DATA)
    return {w for n in names if (w := wire_name(n)) is not None}


def domain_defaults(event: DomainEvent) -> dict[str, Any]:
    parameters = list(inspect.signature(event.method).parameters.values())[1:]  # without self
    return {
        w: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty and (w := wire_name(p.name)) is not None
    }


def wire_data(domain_event: Any) -> dict[str, Any]:
    """The envelope's ``data`` of a domain event, as the event store builds it."""
    state = {k: v for k, v in vars(domain_event).items() if k not in NOT_DATA}
    data = {w: v for k, v in state.items() if (w := wire_name(k)) is not None and not k.endswith("_encrypted")}
    data |= {w: v is not None for k, v in state.items() if k.endswith("_encrypted") and (w := wire_name(k))}
    return msgspec.to_builtins(data)  # type: ignore[no-any-return]


def struct_fields(cls: type[msgspec.Struct]) -> dict[str, msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return {f.encode_name: f for f in info.fields}


DOMAIN = domain_events()


def test_every_event_the_domain_emits_has_a_struct_and_no_struct_is_stale() -> None:
    assert len(DOMAIN) >= 60
    assert set(event_types()) == set(DOMAIN)


@pytest.mark.parametrize("event_type", sorted(DOMAIN))
def test_a_struct_holds_exactly_the_fields_the_envelope_carries(event_type: str) -> None:
    cls = event_types()[event_type]
    assert set(struct_fields(cls)) == wire_fields(DOMAIN[event_type])
    assert cls.__name__ == event_type
    assert cls.__struct_config__.tag == event_type and cls.__struct_config__.tag_field == "type"
    assert cls.__struct_config__.frozen
    assert cls.aggregate == DOMAIN[event_type].aggregate  # type: ignore[attr-defined]


@pytest.mark.parametrize("event_type", sorted(DOMAIN))
def test_a_field_the_domain_defaults_has_the_same_default(event_type: str) -> None:
    fields = struct_fields(event_types()[event_type])
    for name, default in domain_defaults(DOMAIN[event_type]).items():
        assert not fields[name].required, f"{event_type}.{name} is defaulted in the domain: older events lack it"
        assert fields[name].default == default, f"{event_type}.{name}"


# --- payloads an older (or the present) version wrote -----------------------------------------------------
def sample(t: msgspec.inspect.Type) -> Any:
    """A value of type ``t``, as it reads on the wire (JSON builtins); every field of a Struct set."""
    match t:
        case msgspec.inspect.Metadata():
            return sample(t.type)
        case msgspec.inspect.StrType() | msgspec.inspect.AnyType():
            return "text"
        case msgspec.inspect.BoolType():
            return True
        case msgspec.inspect.IntType():
            return 3
        case msgspec.inspect.FloatType():
            return 1.5
        case msgspec.inspect.UUIDType():
            return str(UUID(int=7))
        case msgspec.inspect.DateTimeType():
            return "2026-12-04T10:00:00+00:00"
        case msgspec.inspect.LiteralType():
            return t.values[0]
        case msgspec.inspect.ListType():
            return [sample(t.item_type)]
        case msgspec.inspect.DictType():
            return {"key": sample(t.value_type)}
        case msgspec.inspect.UnionType():
            return sample(next(u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)))
        case msgspec.inspect.StructType():
            return {f.encode_name: sample(f.type) for f in t.fields}
    raise AssertionError(f"no sample for {t}")


def full_payload(event_type: str) -> dict[str, Any]:
    payload = sample(msgspec.inspect.type_info(event_types()[event_type]))
    assert isinstance(payload, dict)
    return payload


def envelope(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": 1,
        "event_id": str(uuid4()),
        "type": event_type,
        "aggregate_type": DOMAIN[event_type].aggregate if event_type in DOMAIN else "Thing",
        "aggregate_id": str(uuid4()),
        "aggregate_version": 1,
        "occurred_at": "2026-12-04T10:00:00+00:00",
        "tenant_id": str(uuid4()),
        "actor": "system",
        "correlation_id": "c-1",
        "data": data,
        "schema_version": SCHEMA_VERSION,
    }


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = contract_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("event_type", sorted(DOMAIN))
def test_a_payload_written_before_any_defaulted_field_existed_still_decodes(
    event_type: str, validator: Draft202012Validator
) -> None:
    full = full_payload(event_type)
    defaulted = [name for name, f in struct_fields(event_types()[event_type]).items() if not f.required]
    for omitted in [[], *([name] for name in defaulted), defaulted]:
        older = {k: v for k, v in full.items() if k not in omitted}
        decoded = decode_data(event_type, older)
        assert type(decoded).__name__ == event_type
        validator.validate(envelope(event_type, older))


def test_what_the_aggregates_emit_decodes_and_fits_the_schema(validator: Draft202012Validator) -> None:
    """Real events with the nested shapes the contract types (tool calls, images, citations, chunks,
    prompts, tools, capabilities, embeddings, knowledge changes, provider keys)."""
    owner = uuid4()
    chat = Chat(tenant_id="t", owner_id=owner, title="Plans", source="openai", client_chat_id="c-1")
    chat.post("m1", "user", "Look", None, images=[{"sha256": "ab" * 32, "media_type": "image/png"}])
    chat.post("m2", "assistant", "", "m1", tool_calls=[{"id": "call_1", "name": "lookup", "arguments": "{}"}])
    chat.post_tool_result("m3", "m2", tool_call_id="call_1", name=None, content="42", latency_ms=12.345)
    generation = Generation(
        tenant_id="t", chat_id=None, user_id=owner, model_id=uuid4(), model="m", user_message_id="m3",
        answer_message_id="m4", params={"temperature": 0.2}, reserved_tokens=100, purpose="title",
        prompt=[{"role": "user", "content": "### Task: title"}],
        tools={"sha256": "cd" * 32, "names": ["lookup"], "choice": {"type": "function", "function": {"name": "lookup"}}, "parallel": None},
        tools_ignored=[],
    )  # fmt: skip
    generation.start(attempt=1, worker="w")
    citation = {
        "n": 1, "document_id": str(uuid4()), "knowledge_id": None, "filename": "a.md", "title": None,
        "chunk_index": 0, "heading": "", "page": None, "score": 0.5,
    }  # fmt: skip
    generation.complete(
        text="Plans", thinking="", prompt_tokens=5, completion_tokens=1, finish_reason="stop", ttft_ms=1.0,
        tokens_per_s=10.0, duration_ms=100.0, attempt=1, citations=[citation], tool_calls=[],
    )  # fmt: skip
    chat.record_answer(
        message_id="m4", parent_id="m3", generation_id=generation.id, model="m", content="Plans", thinking="",
        status="completed", prompt_tokens=5, completion_tokens=1,
        timings={"ttft_ms": 1.0, "tokens_per_s": 10.0, "duration_ms": 100.0}, citations=[citation],
    )  # fmt: skip
    kb = KnowledgeBase(
        tenant_id="t", owner_id=owner, name="KB", description="", embedding={"provider_id": None, "model": "all-minilm-l6-v2"},
        chunk_size=1000, chunk_overlap=100,
    )  # fmt: skip
    kb.update(name="Handbook", chunk_size=800)
    kb.change_embedding({"provider_id": str(uuid4()), "model": "other"})
    document = Document(
        tenant_id="t", scope=f"knowledge/{kb.id}", sha256="ef" * 32, owner_id=owner, knowledge_id=kb.id, chat_id=None,
        filename="a.md", media_type="text/markdown", size=10, source_url=None,
    )  # fmt: skip
    chunk = {"index": 0, "text": "Hello", "heading": "Intro", "page": 1, "start": 0, "end": 5}
    document.extracted(title="A", media_type="text/markdown", chars=5, chunks=[chunk], part_chars=1000)
    provider = Provider(tenant_id="t", name="vllm", kind="openai", base_url="http://x", api_key_encrypted="sealed")
    provider.change(base_url=None, api_key_encrypted=None)
    model = Model(
        tenant_id="t", name="m", display_name="M", provider_id=provider.id, provider_kind="openai", upstream_model="m-1",
        defaults={}, open_to_tenant=True,
    )  # fmt: skip
    model.set_capabilities({"context_window": 4096})
    user = User(tenant_id="t", email="a@b.test", name="A", role="user", password_hash="h", created_by="self")
    user.change_password("h2")
    key = ApiKey(
        key_id=uuid4(), tenant_id="t", user_id=user.id, name="gw", prefix="pk_", key_hash="h", scopes=["gateway"],
        expires_at=None,
    )  # fmt: skip
    key.set_role_map({"Staff": "premium"})
    invitation = Invitation(
        invitation_id=uuid4(), tenant_id="t", email="c@b.test", role="admin", token_hash="h",
        expires_at=datetime(2027, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    policy = QuotaPolicy(tenant_id="t")
    policy.set_user_limit(user.id, None)

    seen = set()
    for aggregate in (chat, generation, kb, document, provider, model, user, key, invitation, policy):
        for event in aggregate.collect_events():
            event_type = type(event).__name__
            data = wire_data(event)
            decoded = decode_data(event_type, data)
            validator.validate(envelope(event_type, data))
            # Nothing the domain wrote is lost on the way through the contract.
            assert {k: v for k, v in msgspec.to_builtins(decoded).items() if k != "type"} == data, event_type
            seen.add(event_type)
    assert {"MessagePosted", "ToolResultPosted", "GenerationCompleted", "DocumentChunked", "ProviderRegistered"} <= seen


def test_decoding_names_the_type_and_the_field_that_does_not_fit() -> None:
    with pytest.raises(EventDataMismatch, match="GenerationCancelled.*'prompt_tokens'") as wrong:
        decode_data("GenerationCancelled", {"text": "a", "prompt_tokens": "many", "completion_tokens": 1, "attempt": 1})
    assert (wrong.value.event_type, wrong.value.field) == ("GenerationCancelled", "prompt_tokens")
    with pytest.raises(EventDataMismatch) as missing:
        decode_data("ChatRenamed", {})
    assert missing.value.field == "title"
    with pytest.raises(EventDataMismatch, match="role"):
        decode_data("MessagePosted", {"message_id": "m", "role": "tool", "content": "x", "parent_id": None})
    with pytest.raises(UnknownEventType, match="NoSuchThing"):
        decode_data("NoSuchThing", {})


# --- personal data and subjects ---------------------------------------------------------------------------
PERSONAL = {
    "UserRegistered": {"email", "name"},
    "UserRenamed": {"name"},
    "EmailClaimed": {"email"},
    "InvitationIssued": {"email"},
    "SignInFailed": {"email"},
    "ExternalIdentityLinked": {"subject"},
    "ChatCreated": {"title"},
    "ChatRenamed": {"title"},
    "ChatTagsChanged": {"tags"},
    "MessageImported": {"content", "thinking", "tool_calls"},
    "FolderCreated": {"name"},
    "FolderRenamed": {"name"},
    "MessagePosted": {"content", "tool_calls"},
    "ToolResultPosted": {"content"},
    "AnswerRecorded": {"content", "thinking", "tool_calls", "citations"},
    "GenerationRequested": {"prompt"},
    "GenerationCompleted": {"text", "thinking", "tool_calls", "citations"},
    "GenerationFailed": {"text"},
    "GenerationCancelled": {"text"},
    "DocumentUploaded": {"filename", "source_url"},
    "DocumentReuploaded": {"filename", "source_url"},
    "DocumentExtracted": {"title"},
    "DocumentChunked": {"chunks"},
    "PreferencesSet": {"preferences"},
    "PromptCreated": {"title", "content"},
    "PromptUpdated": {"title", "content"},
    "ShareCreated": {"title"},
    "MessageRated": {"comment"},
    "RatingChanged": {"comment"},
    "ScimAccountCreated": {"profile"},
    "ScimAccountChanged": {"profile"},
}
SUBJECTS = {
    "ChatCreated": {"user": "owner_id"},
    "FolderTreeCreated": {"user": "owner_id"},
    "GenerationRequested": {"user": "user_id", "chat": "chat_id"},
    "DocumentUploaded": {"user": "owner_id", "chat": "chat_id"},
    "EmailClaimed": {"user": "user_id"},
    "InvitationAccepted": {"user": "user_id"},
    "ToolResultPosted": {"user": "user_id"},
    "SignInFailed": {"user": "user_id"},
    "ExternalIdentityLinked": {"user": "user_id"},
    "UserSettingsCreated": {"user": "user_id"},
    "PromptCreated": {"user": "subject_id"},
    "ShareCreated": {"user": "owner_id", "chat": "chat_id"},
    "MessageRated": {"user": "user_id", "chat": "chat_id"},
    "ScimAccountCreated": {"user": "user_id"},
}


def test_exactly_the_personal_fields_are_marked() -> None:
    for event_type in event_types():
        assert personal_fields(event_type) == PERSONAL.get(event_type, set()), event_type
    assert personal_fields("NoSuchThing") == frozenset()


def test_the_subjects_are_named() -> None:
    for event_type in event_types():
        assert dict(subject_fields(event_type)) == SUBJECTS.get(event_type, {}), event_type
    assert dict(subject_fields("NoSuchThing")) == {}
    assert dict(AGGREGATE_SUBJECTS) == {"User": "user", "Chat": "chat"}
    assert set(AGGREGATE_SUBJECTS) <= {e.aggregate for e in DOMAIN.values()}


def test_the_schema_has_every_type_and_marks_personal_data_and_subjects(validator: Draft202012Validator) -> None:
    schema = contract_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["x-schema-version"] == SCHEMA_VERSION
    defs = schema["$defs"]
    conditional = {rule["if"]["properties"]["type"]["const"] for rule in schema["allOf"]}
    assert set(event_types()) <= set(defs) and conditional == set(event_types())
    for event_type in event_types():
        properties = defs[event_type]["properties"]
        assert {k for k, v in properties.items() if v.get("x-personal")} == personal_fields(event_type)
        assert {v["x-subject"]: k for k, v in properties.items() if "x-subject" in v} == dict(subject_fields(event_type))
    assert "EventEnvelope" in defs and "EventData" in defs

    wrong = envelope("ChatRenamed", {"title": 7})
    assert not validator.is_valid(wrong)
    assert validator.is_valid(envelope("SomethingNewer", {"anything": 1}))  # new event types are an addition
    assert not validator.is_valid({**envelope("ChatRenamed", {"title": "x"}), "aggregate_version": "one"})


# --- the evolution guard ----------------------------------------------------------------------------------
def type_string(t: msgspec.inspect.Type) -> str:
    """A field's type as the snapshot records it (markers and descriptions aside: they are no retyping)."""
    match t:
        case msgspec.inspect.Metadata():
            return type_string(t.type)
        case msgspec.inspect.StructType():
            return t.cls.__name__
        case msgspec.inspect.ListType():
            return f"list[{type_string(t.item_type)}]"
        case msgspec.inspect.DictType():
            return f"dict[{type_string(t.key_type)}, {type_string(t.value_type)}]"
        case msgspec.inspect.UnionType():
            return " | ".join(type_string(u) for u in t.types)
        case msgspec.inspect.LiteralType():
            return "literal[" + ", ".join(map(repr, t.values)) + "]"
    return type(t).__name__.removesuffix("Type").lower()


def current_shapes() -> dict[str, dict[str, dict[str, str]]]:
    """{"events": type -> {field: type}, "structs": nested struct -> {field: type}}, defaults marked "= "."""
    events: dict[str, dict[str, str]] = {}
    structs: dict[str, dict[str, str]] = {}

    def shape(cls: type[msgspec.Struct]) -> dict[str, str]:
        out = {}
        for name, f in struct_fields(cls).items():
            out[name] = type_string(f.type) + ("" if f.required else " =")
            for nested in _nested_structs(f.type):
                if nested.__name__ not in structs:
                    structs[nested.__name__] = {}
                    structs[nested.__name__] = shape(nested)
        return out

    for event_type, cls in event_types().items():
        events[event_type] = shape(cls)
    return {"events": dict(sorted(events.items())), "structs": dict(sorted(structs.items()))}


def _nested_structs(t: msgspec.inspect.Type) -> Iterator[type[msgspec.Struct]]:
    match t:
        case msgspec.inspect.Metadata():
            yield from _nested_structs(t.type)
        case msgspec.inspect.StructType():
            yield t.cls
        case msgspec.inspect.ListType():
            yield from _nested_structs(t.item_type)
        case msgspec.inspect.DictType():
            yield from _nested_structs(t.value_type)
        case msgspec.inspect.UnionType():
            for u in t.types:
                yield from _nested_structs(u)


_LITERAL = re.compile(r"literal\[([^\]]*)\]")


def widened(released: str, now: str) -> bool:
    """Whether ``now`` is ``released`` with values added to its literals (a new role): every value stored
    before still decodes."""
    if _LITERAL.sub("literal", released) != _LITERAL.sub("literal", now):
        return False
    return all(
        set(old.split(", ")) <= set(new.split(", "))
        for old, new in zip(_LITERAL.findall(released), _LITERAL.findall(now), strict=True)
    )


def breaks(released: dict[str, dict[str, dict[str, str]]], now: dict[str, dict[str, dict[str, str]]]) -> list[str]:
    """What ``now`` breaks of ``released``: a type or field gone (removed or renamed), a field retyped
    (other than a literal widened) or no longer defaulted, a new field without a default (older events
    lack it)."""
    found = []
    for group in ("events", "structs"):
        for name, fields in released[group].items():
            if name not in now[group]:
                found.append(f"{group[:-1]} {name} is gone")
                continue
            for field, typed in fields.items():
                if field not in now[group][name]:
                    found.append(f"{name}.{field} is gone (removed or renamed)")
                elif now[group][name][field] != typed and not widened(typed, now[group][name][field]):
                    found.append(f"{name}.{field} was {typed!r}, is {now[group][name][field]!r}")
            for field, typed in now[group][name].items():
                if field not in fields and not typed.endswith(" ="):
                    found.append(f"{name}.{field} is new without a default: events stored before it lack it")
    return found


def test_no_field_of_the_released_contract_was_removed_renamed_or_retyped() -> None:
    released = json.loads(SNAPSHOT.read_text())
    assert released["schema_version"] == SCHEMA_VERSION
    assert breaks(released, current_shapes()) == []


def test_the_guard_catches_each_kind_of_break_and_lets_additions_through() -> None:
    released = {"events": {"E": {"a": "str", "b": "int ="}}, "structs": {}}
    assert breaks(released, {"events": {"E": {"a": "str", "b": "int =", "c": "str ="}}, "structs": {}}) == []
    assert breaks(released, {"events": {"E": {"a": "str"}}, "structs": {}}) == ["E.b is gone (removed or renamed)"]
    assert breaks(released, {"events": {"E": {"a": "int", "b": "int ="}}, "structs": {}}) == ["E.a was 'str', is 'int'"]
    assert breaks(released, {"events": {"E": {"a": "str", "b": "int =", "c": "str"}}, "structs": {}}) == [
        "E.c is new without a default: events stored before it lack it"
    ]
    assert breaks(released, {"events": {}, "structs": {}}) == ["event E is gone"]
    roles = {"events": {"E": {"r": "literal['a', 'b'] | none"}}, "structs": {}}
    assert breaks(roles, {"events": {"E": {"r": "literal['a', 'b', 'c'] | none"}}, "structs": {}}) == []
    assert breaks(roles, {"events": {"E": {"r": "literal['a'] | none"}}, "structs": {}}) == [
        "E.r was \"literal['a', 'b'] | none\", is \"literal['a'] | none\""
    ]
    assert breaks(roles, {"events": {"E": {"r": "literal['a', 'b', 'c']"}}, "structs": {}}) != []


def record_additions() -> None:
    """Add new event types and fields to the snapshot; refuse when the contract breaks it."""
    released = json.loads(SNAPSHOT.read_text()) if SNAPSHOT.exists() else {"events": {}, "structs": {}}
    now = current_shapes()
    problems = breaks(released, now)
    if problems:
        sys.exit("the contract breaks the released one; the snapshot stays as it is:\n  " + "\n  ".join(problems))
    merged: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    for group in ("events", "structs"):
        merged[group] = {name: {**released[group].get(name, {}), **fields} for name, fields in now[group].items()}
    SNAPSHOT.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    print(f"recorded {SNAPSHOT}")


if __name__ == "__main__":
    record_additions()
