"""The typed event contract: what the ``data`` of each event type holds, as integrators may rely on it.

Every event type the domain emits has one frozen msgspec Struct here, tagged with the event's type name
(the envelope's ``type``; ``tag_field="type"``), and all of them form the union ``EventData``.
``decode_data(envelope.type, envelope.data)`` turns an envelope's untyped ``data`` into its Struct;
``contract_schema()`` is the JSON Schema (2020-12) of the envelope together with every payload, served at
``GET /api/v1/events/schema`` and printed by ``parley schema export``. parley's own projectors consume
these Structs: each event they handle is decoded once with ``decode_data`` and read by attribute.

The payloads mirror what the envelope carries, not the domain event itself: fields whose names end in
``_hash`` never leave the event store, and a field ``x_encrypted`` travels only as ``has_x: bool``.

Personal data. A field that holds personal data is annotated ``Personal[...]`` (``"x-personal": true``
in the JSON Schema); a field that names the data subject whose key seals it is annotated
``SubjectUser[...]`` or ``SubjectChat[...]`` (``"x-subject"``); for the ``User`` and ``Chat`` aggregates
the aggregate itself is a subject (``AGGREGATE_SUBJECTS``). Personal fields are sealed by
crypto-shredding (``adapters.crypto``): on NATS and in the event store such a field may hold a string
``enc:v1:...`` in place of its value. This contract describes the opened form. Content whose subject was
erased opens as the marker string ``"[erased]"`` (or an empty list or object for fields that are not
strings).

Evolution rules (version ``SCHEMA_VERSION``; the tests enforce them against the checked-in snapshot
``tests/unit/event_contract_v1.json``):

- Add fields only with a default, so that events stored before the field existed still decode; the
  default mirrors the domain method's default.
- Never rename, retype or remove a field, and never rename an event type (the tag is the wire name).
- Consumers ignore fields they do not know (no Struct forbids unknown fields), so adding is safe both ways.
- A change that cannot be an addition needs a new ``class_version`` on the domain event with an upcaster
  (``upcast_v1_v2``) that turns stored events into the new shape, and a new schema version here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, TypeAlias, TypeVar, Union, cast, get_args
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from schema.events import SCHEMA_VERSION, EventEnvelope

__all__ = [
    "AGGREGATE_SUBJECTS",
    "SCHEMA_VERSION",
    "ContractError",
    "EventData",
    "EventDataMismatch",
    "UnknownEventType",
    "Personal",
    "SubjectUser",
    "SubjectChat",
    "contract_schema",
    "decode_data",
    "event_types",
    "personal_fields",
    "subject_fields",
    "WITHHELD",
    "withhold_personal",
]

T = TypeVar("T")

Personal: TypeAlias = Annotated[T, Meta(extra={"personal": True}, extra_json_schema={"x-personal": True})]
"""Personal data: sealed per data subject, erased with the subject's key."""
SubjectUser: TypeAlias = Annotated[T, Meta(extra={"subject": "user"}, extra_json_schema={"x-subject": "user"})]
"""The id of the user whose personal data this event holds."""
SubjectChat: TypeAlias = Annotated[T, Meta(extra={"subject": "chat"}, extra_json_schema={"x-subject": "chat"})]
"""The id of the chat whose content this event holds."""

PersonalText: TypeAlias = Personal[str]

AGGREGATE_SUBJECTS: Mapping[str, str] = MappingProxyType({"User": "user", "Chat": "chat"})
"""Aggregates that are themselves a data subject: every event of a ``User`` is about that user, every
event of a ``Chat`` about that chat."""

Role = Literal["admin", "user", "premium", "guest", "pending", "auditor"]  # widened only: old events still decode
Scope = Literal["read", "write", "admin", "gateway"]
ProviderKind = Literal["local", "openai", "ollama", "echo"]
AccessLevel = Literal["read", "write"]
FinishedStatus = Literal["completed", "failed", "cancelled"]

TenantId = Annotated[str, Meta(description="The tenant's id (the UUID of its slug, as text).")]
Tokens = Annotated[int, Meta(ge=0, description="Tokens, as counted by the model's own tokenizer.")]
Attempt = Annotated[int, Meta(ge=0, description="The delivery attempt of the generation job (1 for the first).")]
MessageId = Annotated[str, Meta(description="A message's id within its chat.")]
Limit = Annotated[int | None, Meta(description="Tokens per day; null: unlimited.")]


# --- nested shapes -------------------------------------------------------------------------------------
class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A function call a model made."""

    id: Annotated[str, Meta(description="parley's id for the call (``call_<generation hex>_<index>``) or the client's.")]
    name: str
    arguments: Annotated[str, Meta(description="The JSON text the model wrote, unparsed (it may be invalid JSON).")] = ""


class ImageRef(msgspec.Struct, frozen=True, kw_only=True):
    """An image in a user turn; its bytes are in the blob store under ``sha256``, never in an event."""

    sha256: str
    media_type: str


class Citation(msgspec.Struct, frozen=True, kw_only=True):
    """A retrieved chunk an answer was given, numbered as the answer cites it."""

    n: Annotated[int, Meta(description="The number the answer cites it by, from 1.")]
    document_id: str
    knowledge_id: str | None
    filename: str
    title: str | None
    chunk_index: int
    heading: Annotated[str, Meta(description="The heading path of the chunk's section; empty before the first heading.")]
    page: Annotated[int | None, Meta(description="The 1-based page where the chunk starts, where the format has pages.")]
    score: Annotated[float, Meta(description="Its reciprocal-rank-fusion score.")]


class DocumentChunk(msgspec.Struct, frozen=True, kw_only=True):
    """One chunk of a document's text, as it is embedded and cited."""

    index: Annotated[int, Meta(description="0-based position in the document.")]
    text: Annotated[str, Meta(description="The chunk's own text, without its heading path.")]
    heading: Annotated[str, Meta(description="The heading path of its section; empty before the first heading.")]
    page: Annotated[int | None, Meta(description="The 1-based page where it starts, where the format has pages.")]
    start: Annotated[int, Meta(description="Where the chunk starts in the extracted text (characters).")]
    end: Annotated[int, Meta(description="Where it ends (exclusive).")]


class PromptTurn(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A turn of a generation's own prompt (housekeeping calls outside any chat); what a turn does not
    have is absent."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: list[ToolCall] = []
    images: list[ImageRef] = []
    tool_call_id: Annotated[str | None, Meta(description="On a tool turn: the call it answers.")] = None
    name: Annotated[str | None, Meta(description="On a tool turn: the function's name.")] = None


class ToolsOffered(msgspec.Struct, frozen=True, kw_only=True):
    """The tools a generation was offered; their definitions are in the blob store under ``sha256``."""

    sha256: str
    names: list[str]
    choice: Annotated[str | dict[str, Any] | None, Meta(description="OpenAI ``tool_choice``: none, auto, required or a function.")] = None
    parallel: Annotated[bool | None, Meta(description="OpenAI ``parallel_tool_calls``; null: the model's default.")] = None


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    """How a generation went, in milliseconds and tokens per second."""

    ttft_ms: Annotated[float, Meta(description="Time to the first token.")]
    tokens_per_s: float
    duration_ms: float


class EmbeddingSetting(msgspec.Struct, frozen=True, kw_only=True):
    """Which model embeds a knowledge base."""

    provider_id: Annotated[str | None, Meta(description="The provider's id; null: the embedded local model.")] = None
    model: str


class KnowledgeBaseChanges(msgspec.Struct, frozen=True, kw_only=True):
    """The settings a ``KnowledgeBaseUpdated`` changed; a setting absent was not changed."""

    name: str | UnsetType = UNSET
    description: str | UnsetType = UNSET
    chunk_size: int | UnsetType = UNSET
    chunk_overlap: int | UnsetType = UNSET


class ModelCapabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a model can serve, as its admin set it."""

    context_window: Annotated[int, Meta(description="Tokens of prompt and answer together.")]
    tools: Annotated[bool, Meta(description="It can call functions.")]
    vision: Annotated[bool, Meta(description="It reads images.")]
    params: Annotated[list[str], Meta(description="The optional sampling parameters it honours.")]
    max_output_tokens: Annotated[int | None, Meta(description="The most tokens an answer may have; null: the rest of the window.")] = None


# --- event payloads ------------------------------------------------------------------------------------
class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    aggregate: ClassVar[str]
    """The aggregate type that emits this event (the envelope's ``aggregate_type``)."""


# Identity ------------------------------------------------------------------------------------------------
class TenantCreated(_Event, frozen=True, kw_only=True, tag="TenantCreated", tag_field="type"):
    """A tenant was created."""

    aggregate = "Tenant"
    slug: str
    name: str
    allow_signup: Annotated[bool, Meta(description="Whether anyone may sign up, or only invited users.")]
    default_role: Annotated[Role, Meta(description="The role of users who sign up.")]
    domains: Annotated[list[str], Meta(description="Host names that route requests to this tenant.")]


class TenantSettingsChanged(_Event, frozen=True, kw_only=True, tag="TenantSettingsChanged", tag_field="type"):
    """A tenant's settings changed (all of them are stated)."""

    aggregate = "Tenant"
    name: str
    allow_signup: bool
    default_role: Role
    domains: list[str]


class SelfErasureSet(_Event, frozen=True, kw_only=True, tag="SelfErasureSet", tag_field="type"):
    """Whether the tenant's users may erase themselves changed."""

    aggregate = "Tenant"
    allowed: bool


class FirstAdminClaimed(_Event, frozen=True, kw_only=True, tag="FirstAdminClaimed", tag_field="type"):
    """The tenant's first admin was named (once per tenant)."""

    aggregate = "Tenant"
    user_id: UUID


class UserRegistered(_Event, frozen=True, kw_only=True, tag="UserRegistered", tag_field="type"):
    """A user account was created (signed up, invited, made by an admin or named by a gateway)."""

    aggregate = "User"
    tenant_id: TenantId
    email: Personal[Annotated[str, Meta(description="The normalised e-mail address.")]]
    name: PersonalText
    role: Role
    created_by: Annotated[str, Meta(description="Who created it: an actor (``user:<id>``, ``system:...``) or ``self``.")]


class PasswordChanged(_Event, frozen=True, kw_only=True, tag="PasswordChanged", tag_field="type"):
    """The user's password changed (the hash never leaves the event store); older tokens are revoked."""

    aggregate = "User"


class RoleChanged(_Event, frozen=True, kw_only=True, tag="RoleChanged", tag_field="type"):
    """The user's role changed; older tokens are revoked."""

    aggregate = "User"
    role: Role
    previous_role: Role


class UserRenamed(_Event, frozen=True, kw_only=True, tag="UserRenamed", tag_field="type"):
    """The user's display name changed."""

    aggregate = "User"
    name: PersonalText


class UserDeactivated(_Event, frozen=True, kw_only=True, tag="UserDeactivated", tag_field="type"):
    """The account was deactivated; its tokens are revoked."""

    aggregate = "User"


class UserReactivated(_Event, frozen=True, kw_only=True, tag="UserReactivated", tag_field="type"):
    """The account was reactivated."""

    aggregate = "User"


class UserErased(_Event, frozen=True, kw_only=True, tag="UserErased", tag_field="type"):
    """The user's personal data was erased (GDPR art. 17): the account is closed for good and the keys
    sealing the user's data are destroyed."""

    aggregate = "User"
    erased_by: Annotated[str, Meta(description="The actor who erased it.")]


class TokensRevoked(_Event, frozen=True, kw_only=True, tag="TokensRevoked", tag_field="type"):
    """Every token the user holds was revoked."""

    aggregate = "User"
    reason: Annotated[str, Meta(description="Why, e.g. ``logout_everywhere``.")]


class EmailClaimed(_Event, frozen=True, kw_only=True, tag="EmailClaimed", tag_field="type"):
    """An e-mail address was taken by a user of a tenant (what makes e-mails unique per tenant)."""

    aggregate = "EmailIndex"
    tenant_id: TenantId
    email: PersonalText
    user_id: SubjectUser[UUID]


class DomainClaimed(_Event, frozen=True, kw_only=True, tag="DomainClaimed", tag_field="type"):
    """A host name was claimed by a tenant."""

    aggregate = "DomainIndex"
    domain: str
    tenant_id: TenantId


class InvitationIssued(_Event, frozen=True, kw_only=True, tag="InvitationIssued", tag_field="type"):
    """An invitation to join a tenant with a role (its token's hash never leaves the event store)."""

    aggregate = "Invitation"
    invitation_id: UUID
    tenant_id: TenantId
    email: PersonalText
    role: Role
    expires_at: datetime


class InvitationAccepted(_Event, frozen=True, kw_only=True, tag="InvitationAccepted", tag_field="type"):
    """The invitation was used."""

    aggregate = "Invitation"
    user_id: SubjectUser[Annotated[UUID, Meta(description="The user who accepted it.")]]


class InvitationRevoked(_Event, frozen=True, kw_only=True, tag="InvitationRevoked", tag_field="type"):
    """The invitation was withdrawn before it was used."""

    aggregate = "Invitation"


class ApiKeyCreated(_Event, frozen=True, kw_only=True, tag="ApiKeyCreated", tag_field="type"):
    """An API key was created (its hash never leaves the event store)."""

    aggregate = "ApiKey"
    key_id: UUID
    tenant_id: TenantId
    user_id: Annotated[UUID, Meta(description="The key's owner.")]
    name: str
    prefix: Annotated[str, Meta(description="The key's first characters, to tell keys apart.")]
    scopes: list[Scope]
    expires_at: datetime | None
    role_map: Annotated[
        dict[str, Role] | None, Meta(description="A gateway key's map from the front end's role names to parley roles.")
    ] = None


class ApiKeyRoleMapChanged(_Event, frozen=True, kw_only=True, tag="ApiKeyRoleMapChanged", tag_field="type"):
    """A gateway key's role map changed."""

    aggregate = "ApiKey"
    role_map: dict[str, Role]


class ApiKeyRevoked(_Event, frozen=True, kw_only=True, tag="ApiKeyRevoked", tag_field="type"):
    """The API key was revoked."""

    aggregate = "ApiKey"


class ScimTokenIssued(_Event, frozen=True, kw_only=True, tag="ScimTokenIssued", tag_field="type"):
    """A tenant admin issued a SCIM token for the tenant's identity provider (its hash never leaves the
    event store)."""

    aggregate = "ScimToken"
    token_id: UUID
    tenant_id: TenantId
    name: str
    prefix: Annotated[str, Meta(description="The token's first characters, to tell tokens apart.")]
    issued_by: Annotated[str, Meta(description="The actor who issued it.")]


class ScimTokenRevoked(_Event, frozen=True, kw_only=True, tag="ScimTokenRevoked", tag_field="type"):
    """The SCIM token was revoked."""

    aggregate = "ScimToken"


ScimProfile = Annotated[
    dict[str, Any],
    Meta(description="What SCIM holds beyond the parley user: userName, emails (primary first), externalId, "
         "givenName, familyName, displayName, and whether the provider set active."),
]


class ScimDirectoryOpened(_Event, frozen=True, kw_only=True, tag="ScimDirectoryOpened", tag_field="type"):
    """A tenant's identity provider provisioned its first user or group."""

    aggregate = "ScimDirectory"
    tenant_id: TenantId


class ScimUserListed(_Event, frozen=True, kw_only=True, tag="ScimUserListed", tag_field="type"):
    """The identity provider provisioned a user (the user's own events, and its ``ScimAccount``, say the
    rest; the hash of the userName kept for uniqueness never leaves the event store)."""

    aggregate = "ScimDirectory"
    user_id: UUID


class ScimUserNameChanged(_Event, frozen=True, kw_only=True, tag="ScimUserNameChanged", tag_field="type"):
    """A provisioned user's userName changed (its hash, kept for uniqueness, never leaves the event store)."""

    aggregate = "ScimDirectory"
    user_id: UUID


class ScimAccountCreated(_Event, frozen=True, kw_only=True, tag="ScimAccountCreated", tag_field="type"):
    """What SCIM holds about a provisioned user beyond the parley user."""

    aggregate = "ScimAccount"
    tenant_id: TenantId
    user_id: SubjectUser[UUID]
    profile: Personal[ScimProfile]


class ScimAccountChanged(_Event, frozen=True, kw_only=True, tag="ScimAccountChanged", tag_field="type"):
    """The provider changed a user's SCIM attributes (all of them as they now are)."""

    aggregate = "ScimAccount"
    profile: Personal[ScimProfile]


class ScimUserUnlisted(_Event, frozen=True, kw_only=True, tag="ScimUserUnlisted", tag_field="type"):
    """The provider deleted a user (who is erased)."""

    aggregate = "ScimDirectory"
    user_id: UUID


class ScimGroupListed(_Event, frozen=True, kw_only=True, tag="ScimGroupListed", tag_field="type"):
    aggregate = "ScimDirectory"
    group_id: UUID
    display_name: str


class ScimGroupNameChanged(_Event, frozen=True, kw_only=True, tag="ScimGroupNameChanged", tag_field="type"):
    aggregate = "ScimDirectory"
    group_id: UUID
    display_name: str


class ScimGroupUnlisted(_Event, frozen=True, kw_only=True, tag="ScimGroupUnlisted", tag_field="type"):
    aggregate = "ScimDirectory"
    group_id: UUID


class GroupCreated(_Event, frozen=True, kw_only=True, tag="GroupCreated", tag_field="type"):
    """An identity provider created a group of the tenant's users."""

    aggregate = "Group"
    tenant_id: TenantId
    display_name: str
    external_id: str | None
    created_by: str


class GroupRenamed(_Event, frozen=True, kw_only=True, tag="GroupRenamed", tag_field="type"):
    aggregate = "Group"
    display_name: str
    external_id: str | None


class GroupMembersChanged(_Event, frozen=True, kw_only=True, tag="GroupMembersChanged", tag_field="type"):
    aggregate = "Group"
    added: Annotated[list[str], Meta(description="User ids that joined the group.")]
    removed: Annotated[list[str], Meta(description="User ids that left it.")]


class GroupRoleMapped(_Event, frozen=True, kw_only=True, tag="GroupRoleMapped", tag_field="type"):
    """A tenant admin set the role the group's members get (null: none)."""

    aggregate = "Group"
    role: Role | None


class GroupDeleted(_Event, frozen=True, kw_only=True, tag="GroupDeleted", tag_field="type"):
    aggregate = "Group"
    deleted_by: str


class SessionStarted(_Event, frozen=True, kw_only=True, tag="SessionStarted", tag_field="type"):
    """A sign-in session began (its refresh token's hash never leaves the event store)."""

    aggregate = "Session"
    session_id: UUID
    tenant_id: TenantId
    user_id: UUID
    token_version: Annotated[int, Meta(description="The user's token version the session was issued under.")]
    expires_at: datetime


class SessionRefreshed(_Event, frozen=True, kw_only=True, tag="SessionRefreshed", tag_field="type"):
    """The session's refresh token was rotated."""

    aggregate = "Session"
    expires_at: datetime


class SessionEnded(_Event, frozen=True, kw_only=True, tag="SessionEnded", tag_field="type"):
    """The session ended (logout, or a refresh token presented twice)."""

    aggregate = "Session"
    reason: str


class SignInFailed(_Event, frozen=True, kw_only=True, tag="SignInFailed", tag_field="type"):
    """A sign-in failed: kept for the audit log."""

    aggregate = "SignInAttempt"
    tenant_id: TenantId
    email: Personal[Annotated[str, Meta(description="The address given (it may belong to no account).")]]
    reason: str
    user_id: SubjectUser[UUID | None] = None
    """The account the address belongs to, where there is one (absent before v1.1)."""


class RevokedTokenUsed(_Event, frozen=True, kw_only=True, tag="RevokedTokenUsed", tag_field="type"):
    """A revoked or reused token was presented."""

    aggregate = "TokenMisuse"
    tenant_id: TenantId
    user_id: UUID | None
    token_kind: Annotated[str, Meta(description="``access`` or ``refresh``.")]
    reason: str


class ExternalIdentityLinked(_Event, frozen=True, kw_only=True, tag="ExternalIdentityLinked", tag_field="type"):
    """An account at an outside identity provider (OIDC, LDAP) was linked to a user, at its first sign-in."""

    aggregate = "ExternalIdentity"
    tenant_id: TenantId
    source: Annotated[str, Meta(description="The provider: ``oidc:<provider id>`` or ``ldap:<directory>``.")]
    subject: Personal[Annotated[str, Meta(description="The account's stable id there (``sub``, a DN).")]]
    user_id: SubjectUser[UUID]


class OidcDirectoryOpened(_Event, frozen=True, kw_only=True, tag="OidcDirectoryOpened", tag_field="type"):
    """A tenant registered its first OpenID Connect provider."""

    aggregate = "OidcDirectory"
    tenant_id: TenantId


class OidcProviderRegistered(_Event, frozen=True, kw_only=True, tag="OidcProviderRegistered", tag_field="type"):
    """A tenant admin registered an OpenID Connect provider (its client secret never leaves the event store)."""

    aggregate = "OidcDirectory"
    provider_id: UUID
    slug: Annotated[str, Meta(description="The provider's name in sign-in URLs.")]
    has_client_secret: bool
    name: str
    issuer: Annotated[str, Meta(description="The issuer URL; its discovery document is read from it.")]
    client_id: str
    scopes: list[str]
    allowed_domains: Annotated[list[str], Meta(description="E-mail domains that may sign in; empty: any.")]
    role_claim: Annotated[str | None, Meta(description="The ID-token claim the role map reads.")]
    role_map: Annotated[dict[str, Role], Meta(description="Claim value -> parley role.")]
    create_users: Annotated[bool, Meta(description="Whether a first sign-in creates an unknown user.")]
    default_role: Annotated[Role, Meta(description="The role of a created user that no claim maps.")]
    enabled: bool


class OidcProviderChanged(_Event, frozen=True, kw_only=True, tag="OidcProviderChanged", tag_field="type"):
    """A provider's settings changed (all of them as they now are)."""

    aggregate = "OidcDirectory"
    provider_id: UUID
    has_client_secret: Annotated[bool, Meta(description="Whether a new client secret was set.")]
    name: str
    issuer: Annotated[str, Meta(description="The issuer URL; its discovery document is read from it.")]
    client_id: str
    scopes: list[str]
    allowed_domains: Annotated[list[str], Meta(description="E-mail domains that may sign in; empty: any.")]
    role_claim: Annotated[str | None, Meta(description="The ID-token claim the role map reads.")]
    role_map: Annotated[dict[str, Role], Meta(description="Claim value -> parley role.")]
    create_users: Annotated[bool, Meta(description="Whether a first sign-in creates an unknown user.")]
    default_role: Annotated[Role, Meta(description="The role of a created user that no claim maps.")]
    enabled: bool


class OidcProviderRemoved(_Event, frozen=True, kw_only=True, tag="OidcProviderRemoved", tag_field="type"):
    """A provider was removed: its users sign in by it no more."""

    aggregate = "OidcDirectory"
    provider_id: UUID


class PersonalDataExported(_Event, frozen=True, kw_only=True, tag="PersonalDataExported", tag_field="type"):
    """A copy of a data subject's personal data was exported (GDPR arts. 15 and 20); who asked is the
    envelope's actor. It carries identifiers only, never the data."""

    aggregate = "DataExport"
    tenant_id: TenantId
    subject_id: Annotated[UUID, Meta(description="The user whose data was exported.")]
    format_version: Annotated[int, Meta(description="The version of the export archive's layout.")]


class ContentAccessed(_Event, frozen=True, kw_only=True, tag="ContentAccessed", tag_field="type"):
    """Someone other than its owner (an admin or an auditor) read personal content, for the reason they
    stated; who read it is the envelope's actor. It carries identifiers and the reason, never the content."""

    aggregate = "ContentAccess"
    tenant_id: TenantId
    subject: Annotated[
        str, Meta(description="The id of what was read: a chat, a generation, a document, or a user (audit detail).")
    ]
    kind: Annotated[
        str,
        Meta(
            description="How it was read: ``chat`` (a chat replayed), ``aggregate`` (a generation or a document"
            " replayed), ``audit_detail`` (the sealed detail of audit entries opened)."
        ),
    ]
    reason: Annotated[str, Meta(description="The reason the reader stated (3-500 characters).")]


# Chats and generations -----------------------------------------------------------------------------------
class ChatCreated(_Event, frozen=True, kw_only=True, tag="ChatCreated", tag_field="type"):
    """A chat was created."""

    aggregate = "Chat"
    tenant_id: TenantId
    owner_id: SubjectUser[UUID]
    title: PersonalText
    source: Annotated[str, Meta(description="``api`` (the chat UI) or ``openai`` (/v1/chat/completions).")]
    client_chat_id: Annotated[str | None, Meta(description="The id a client that keeps its own chat gave it.")] = None


class ChatRenamed(_Event, frozen=True, kw_only=True, tag="ChatRenamed", tag_field="type"):
    """The chat's title changed."""

    aggregate = "Chat"
    title: PersonalText


class ChatArchived(_Event, frozen=True, kw_only=True, tag="ChatArchived", tag_field="type"):
    """The chat was archived."""

    aggregate = "Chat"


class ChatUnarchived(_Event, frozen=True, kw_only=True, tag="ChatUnarchived", tag_field="type"):
    """The chat was unarchived."""

    aggregate = "Chat"


class ChatDeleted(_Event, frozen=True, kw_only=True, tag="ChatDeleted", tag_field="type"):
    """The chat was deleted."""

    aggregate = "Chat"


class MessagePosted(_Event, frozen=True, kw_only=True, tag="MessagePosted", tag_field="type"):
    """A message was added to the chat's tree (a user's question, or a system or assistant turn a client
    handed in)."""

    aggregate = "Chat"
    message_id: MessageId
    role: Literal["system", "user", "assistant"]
    content: PersonalText
    parent_id: Annotated[str | None, Meta(description="The message it follows; null: a root.")]
    tool_calls: Personal[Annotated[list[ToolCall] | None, Meta(description="On an assistant turn: the calls it made.")]] = None
    images: Annotated[list[ImageRef] | None, Meta(description="On a user turn: its images.")] = None


class ToolResultPosted(_Event, frozen=True, kw_only=True, tag="ToolResultPosted", tag_field="type"):
    """The result of a tool call, handed back by the client."""

    aggregate = "Chat"
    message_id: MessageId
    parent_id: str
    user_id: SubjectUser[Annotated[UUID, Meta(description="The chat's owner.")]]
    tool_call_id: Annotated[str, Meta(description="The call it answers.")]
    name: Annotated[str | None, Meta(description="The function's name, where known.")]
    content: PersonalText
    size: Annotated[int, Meta(description="The content's size in bytes (UTF-8).")]
    latency_ms: Annotated[float | None, Meta(description="Time from the call to its result, where the call was parley's.")]


class ChatKnowledgeChanged(_Event, frozen=True, kw_only=True, tag="ChatKnowledgeChanged", tag_field="type"):
    """The knowledge bases the chat's answers draw on changed."""

    aggregate = "Chat"
    knowledge_ids: list[str]


class ChatFileAttached(_Event, frozen=True, kw_only=True, tag="ChatFileAttached", tag_field="type"):
    """A document was attached to the chat."""

    aggregate = "Chat"
    document_id: str


class ChatFileDetached(_Event, frozen=True, kw_only=True, tag="ChatFileDetached", tag_field="type"):
    """A document was detached from the chat."""

    aggregate = "Chat"
    document_id: str


class AnswerRecorded(_Event, frozen=True, kw_only=True, tag="AnswerRecorded", tag_field="type"):
    """A generation's answer (complete, failed or cancelled: the text so far) became a message."""

    aggregate = "Chat"
    message_id: MessageId
    parent_id: str
    generation_id: UUID
    model: Annotated[str, Meta(description="The model's name.")]
    content: PersonalText
    thinking: Personal[Annotated[str, Meta(description="The model's reasoning, apart from its answer.")]]
    status: FinishedStatus
    prompt_tokens: Tokens
    completion_tokens: Tokens
    timings: Timings
    citations: Personal[list[Citation] | None] = None
    tool_calls: Personal[list[ToolCall] | None] = None


class ChatPinned(_Event, frozen=True, kw_only=True, tag="ChatPinned", tag_field="type"):
    """The owner pinned the chat."""

    aggregate = "Chat"


class ChatUnpinned(_Event, frozen=True, kw_only=True, tag="ChatUnpinned", tag_field="type"):
    """The owner unpinned the chat."""

    aggregate = "Chat"


class ChatFiled(_Event, frozen=True, kw_only=True, tag="ChatFiled", tag_field="type"):
    """The owner put the chat in one of their folders, or took it out of any (null). A chat whose folder is
    later deleted is at the top level."""

    aggregate = "Chat"
    folder_id: str | None


class ChatTagsChanged(_Event, frozen=True, kw_only=True, tag="ChatTagsChanged", tag_field="type"):
    """The chat's tags, all of them, normalised (whitespace collapsed, case folded, each once)."""

    aggregate = "Chat"
    tags: Personal[list[str]]


class MessageImported(_Event, frozen=True, kw_only=True, tag="MessageImported", tag_field="type"):
    """A message of an imported chat, as it was where it came from: its role, model and time. Its id is
    parley's, derived from the chat and the message's id in the export."""

    aggregate = "Chat"
    message_id: MessageId
    parent_id: Annotated[str | None, Meta(description="The message it follows; null: a root.")]
    role: Literal["system", "user", "assistant", "tool"]
    content: PersonalText
    created_at: Annotated[datetime, Meta(description="When it was written, as the export says.")]
    model: Annotated[str | None, Meta(description="The model that wrote an answer, by the name the export gives.")]
    thinking: Personal[Annotated[str | None, Meta(description="An answer's reasoning, apart from it.")]]
    tool_calls: Personal[list[ToolCall] | None]
    tool_call_id: Annotated[str | None, Meta(description="A tool message: the call it answers.")]
    tool_name: Annotated[str | None, Meta(description="A tool message: the function's name.")]


class ChatImported(_Event, frozen=True, kw_only=True, tag="ChatImported", tag_field="type"):
    """An import of the chat is complete (its messages came before): where it came from, the branch it was
    on and its own times."""

    aggregate = "Chat"
    source_format: Literal["openwebui", "parley"]
    source_chat_id: Annotated[str, Meta(description="The chat's id in the export.")]
    head_id: Annotated[str | None, Meta(description="The message the chat was at (the current branch).")]
    created_at: datetime
    updated_at: datetime


class GenerationRequested(_Event, frozen=True, kw_only=True, tag="GenerationRequested", tag_field="type"):
    """An answer was requested: the job a worker picks up; the quota reservation is made under it."""

    aggregate = "Generation"
    tenant_id: TenantId
    chat_id: SubjectChat[Annotated[UUID | None, Meta(description="The chat it answers in; null: none (housekeeping).")]]
    user_id: SubjectUser[Annotated[UUID, Meta(description="Whose request it is (billed to them).")]]
    model_id: UUID
    model: str
    user_message_id: Annotated[str, Meta(description="The message it answers.")]
    answer_message_id: Annotated[str, Meta(description="The id the answer will have.")]
    params: Annotated[dict[str, Any], Meta(description="The sampling parameters (temperature, max_tokens, ...).")]
    reserved_tokens: Annotated[int, Meta(ge=0, description="Tokens reserved against the quotas.")]
    purpose: Annotated[str, Meta(description="``chat``, or a front end's housekeeping task (title, tags, ...).")] = "chat"
    prompt: Personal[
        Annotated[list[PromptTurn] | None, Meta(description="The turns of a generation outside any chat; null: the chat's branch.")]
    ] = None
    tools: Annotated[ToolsOffered | None, Meta(description="The tools offered.")] = None
    tools_ignored: Annotated[list[str] | None, Meta(description="Tools sent to a model that cannot call them.")] = None


class GenerationStarted(_Event, frozen=True, kw_only=True, tag="GenerationStarted", tag_field="type"):
    """A worker began an attempt."""

    aggregate = "Generation"
    attempt: Attempt
    worker: Annotated[str, Meta(description="The worker's name.")]


class GenerationCancelRequested(_Event, frozen=True, kw_only=True, tag="GenerationCancelRequested", tag_field="type"):
    """The user asked to stop the generation."""

    aggregate = "Generation"


class GenerationCompleted(_Event, frozen=True, kw_only=True, tag="GenerationCompleted", tag_field="type"):
    """The generation finished."""

    aggregate = "Generation"
    text: PersonalText
    thinking: PersonalText
    prompt_tokens: Tokens
    completion_tokens: Tokens
    finish_reason: Annotated[str, Meta(description="``stop``, ``length`` or ``tool_calls``.")]
    ttft_ms: Annotated[float, Meta(description="Time to the first token, in milliseconds.")]
    tokens_per_s: float
    duration_ms: float
    attempt: Attempt
    citations: Personal[list[Citation] | None] = None
    tool_calls: Personal[list[ToolCall] | None] = None
    tool_names: Annotated[
        list[str] | None,
        Meta(description="The names of the tools called, in order (not personal: usage counts them). Absent before v1.1."),
    ] = None


class GenerationFailed(_Event, frozen=True, kw_only=True, tag="GenerationFailed", tag_field="type"):
    """The generation failed; what was generated is billed."""

    aggregate = "Generation"
    code: Annotated[str, Meta(description="A stable error code, e.g. ``ENGINE_ERROR``.")]
    message: str
    text: Personal[Annotated[str, Meta(description="What was generated before the failure.")]]
    prompt_tokens: Tokens
    completion_tokens: Tokens
    attempt: Attempt


class GenerationCancelled(_Event, frozen=True, kw_only=True, tag="GenerationCancelled", tag_field="type"):
    """The generation was cancelled (or its stream abandoned); what was generated is billed."""

    aggregate = "Generation"
    text: Personal[Annotated[str, Meta(description="What was generated before it stopped.")]]
    prompt_tokens: Tokens
    completion_tokens: Tokens
    attempt: Attempt



# Folders -------------------------------------------------------------------------------------------------
class FolderTreeCreated(_Event, frozen=True, kw_only=True, tag="FolderTreeCreated", tag_field="type"):
    """A user's folder tree began (with their first folder)."""

    aggregate = "FolderTree"
    tenant_id: TenantId
    owner_id: SubjectUser[UUID]


class FolderCreated(_Event, frozen=True, kw_only=True, tag="FolderCreated", tag_field="type"):
    """A folder was made, at the top level (``parent_id`` null) or inside another."""

    aggregate = "FolderTree"
    folder_id: str
    name: PersonalText
    parent_id: str | None


class FolderRenamed(_Event, frozen=True, kw_only=True, tag="FolderRenamed", tag_field="type"):
    """A folder's name changed."""

    aggregate = "FolderTree"
    folder_id: str
    name: PersonalText


class FolderMoved(_Event, frozen=True, kw_only=True, tag="FolderMoved", tag_field="type"):
    """A folder, with everything in it, moved under another (never under itself or its own subfolders),
    or to the top level."""

    aggregate = "FolderTree"
    folder_id: str
    parent_id: str | None


class FolderDeleted(_Event, frozen=True, kw_only=True, tag="FolderDeleted", tag_field="type"):
    """A folder was deleted with every folder under it (``folder_ids``, the folder first); their chats are
    at the top level now."""

    aggregate = "FolderTree"
    folder_ids: list[str]

# Knowledge -----------------------------------------------------------------------------------------------
class KnowledgeBaseCreated(_Event, frozen=True, kw_only=True, tag="KnowledgeBaseCreated", tag_field="type"):
    """A knowledge base was created."""

    aggregate = "KnowledgeBase"
    tenant_id: TenantId
    owner_id: UUID
    name: str
    description: str
    embedding: EmbeddingSetting
    chunk_size: Annotated[int, Meta(description="Characters per chunk.")]
    chunk_overlap: Annotated[int, Meta(description="Characters shared by consecutive chunks.")]


class KnowledgeBaseUpdated(_Event, frozen=True, kw_only=True, tag="KnowledgeBaseUpdated", tag_field="type"):
    """Some of a knowledge base's settings changed."""

    aggregate = "KnowledgeBase"
    changes: KnowledgeBaseChanges


class KnowledgeAccessGranted(_Event, frozen=True, kw_only=True, tag="KnowledgeAccessGranted", tag_field="type"):
    """Access to a knowledge base was granted."""

    aggregate = "KnowledgeBase"
    grantee: Annotated[str, Meta(description="``user:<id>``, ``role:<role>`` or ``tenant``.")]
    level: AccessLevel


class KnowledgeAccessRevoked(_Event, frozen=True, kw_only=True, tag="KnowledgeAccessRevoked", tag_field="type"):
    """A grant was withdrawn."""

    aggregate = "KnowledgeBase"
    grantee: str


class EmbeddingChangeRequested(_Event, frozen=True, kw_only=True, tag="EmbeddingChangeRequested", tag_field="type"):
    """A re-embedding with another model was asked for; the switch follows when the vectors are ready."""

    aggregate = "KnowledgeBase"
    embedding: EmbeddingSetting


class EmbeddingChangeCancelled(_Event, frozen=True, kw_only=True, tag="EmbeddingChangeCancelled", tag_field="type"):
    """The pending re-embedding was called off."""

    aggregate = "KnowledgeBase"


class EmbeddingSwitched(_Event, frozen=True, kw_only=True, tag="EmbeddingSwitched", tag_field="type"):
    """The knowledge base now searches with the new embedding model."""

    aggregate = "KnowledgeBase"
    embedding: EmbeddingSetting


class KnowledgeBaseDeleted(_Event, frozen=True, kw_only=True, tag="KnowledgeBaseDeleted", tag_field="type"):
    """The knowledge base was deleted."""

    aggregate = "KnowledgeBase"


class DocumentUploaded(_Event, frozen=True, kw_only=True, tag="DocumentUploaded", tag_field="type"):
    """A file was uploaded into a knowledge base or a chat; its bytes are in the blob store."""

    aggregate = "Document"
    tenant_id: TenantId
    scope: Annotated[str, Meta(description="``knowledge/<id>`` or ``chats/<id>``.")]
    sha256: str
    owner_id: SubjectUser[UUID]
    knowledge_id: UUID | None
    chat_id: SubjectChat[UUID | None]
    filename: PersonalText
    media_type: str
    size: Annotated[int, Meta(description="Bytes.")]
    source_url: Personal[str | None]


class DocumentReuploaded(_Event, frozen=True, kw_only=True, tag="DocumentReuploaded", tag_field="type"):
    """The same content again, after it was deleted or failed: it is ingested afresh."""

    aggregate = "Document"
    filename: PersonalText
    media_type: str
    size: int
    source_url: Personal[str | None]


class DocumentExtracted(_Event, frozen=True, kw_only=True, tag="DocumentExtracted", tag_field="type"):
    """The document's text was extracted and chunked; the chunks follow in ``parts`` events."""

    aggregate = "Document"
    title: Personal[str | None]
    media_type: str
    chars: Annotated[int, Meta(description="Characters of extracted text.")]
    chunk_count: int
    parts: Annotated[int, Meta(description="How many DocumentChunked events carry the chunks.")]


class DocumentChunked(_Event, frozen=True, kw_only=True, tag="DocumentChunked", tag_field="type"):
    """One part of the document's chunks."""

    aggregate = "Document"
    knowledge_id: UUID | None
    chat_id: UUID | None
    part: Annotated[int, Meta(description="0-based.")]
    parts: int
    chunks: Personal[list[DocumentChunk]]


class DocumentFailed(_Event, frozen=True, kw_only=True, tag="DocumentFailed", tag_field="type"):
    """The document could not be ingested."""

    aggregate = "Document"
    code: str
    message: str


class DocumentDeleted(_Event, frozen=True, kw_only=True, tag="DocumentDeleted", tag_field="type"):
    """The document was deleted."""

    aggregate = "Document"


# Models --------------------------------------------------------------------------------------------------
class ProviderRegistered(_Event, frozen=True, kw_only=True, tag="ProviderRegistered", tag_field="type"):
    """A model provider was registered (its API key never leaves the event store)."""

    aggregate = "Provider"
    tenant_id: TenantId
    name: str
    kind: ProviderKind
    base_url: str | None
    has_api_key: Annotated[bool, Meta(description="Whether an API key is set.")]


class ProviderChanged(_Event, frozen=True, kw_only=True, tag="ProviderChanged", tag_field="type"):
    """A provider's address or key changed."""

    aggregate = "Provider"
    base_url: str | None
    has_api_key: bool


class ModelRegistered(_Event, frozen=True, kw_only=True, tag="ModelRegistered", tag_field="type"):
    """A model was registered on a provider."""

    aggregate = "Model"
    tenant_id: TenantId
    name: str
    display_name: str
    provider_id: UUID
    provider_kind: ProviderKind
    upstream_model: Annotated[str, Meta(description="The model's name at its provider.")]
    defaults: Annotated[dict[str, Any], Meta(description="Default sampling parameters.")]
    open_to_tenant: Annotated[bool, Meta(description="Whether every user of the tenant may use it.")]
    base_model_id: Annotated[UUID | None, Meta(description="A preset's base model; absent before v1.1.")] = None
    base_model: Annotated[str | None, Meta(description="The base model's name.")] = None


class ModelCapabilitiesChanged(_Event, frozen=True, kw_only=True, tag="ModelCapabilitiesChanged", tag_field="type"):
    """What the model can serve was set."""

    aggregate = "Model"
    capabilities: ModelCapabilities


class ModelChanged(_Event, frozen=True, kw_only=True, tag="ModelChanged", tag_field="type"):
    """The model's settings changed."""

    aggregate = "Model"
    display_name: str
    defaults: dict[str, Any]
    open_to_tenant: bool
    active: bool


class ModelKnowledgeChanged(_Event, frozen=True, kw_only=True, tag="ModelKnowledgeChanged", tag_field="type"):
    """The knowledge bases every answer of the model draws on changed."""

    aggregate = "Model"
    knowledge_ids: list[str]


class ModelAccessGranted(_Event, frozen=True, kw_only=True, tag="ModelAccessGranted", tag_field="type"):
    """A user or a role may use the model (exactly one of them is set)."""

    aggregate = "Model"
    user_id: str | None
    role: Role | None


class ModelAccessRevoked(_Event, frozen=True, kw_only=True, tag="ModelAccessRevoked", tag_field="type"):
    """A grant was withdrawn (exactly one of them is set)."""

    aggregate = "Model"
    user_id: str | None
    role: Role | None


# Workspace: user settings and the prompt library --------------------------------------------------------
class UserSettingsCreated(_Event, frozen=True, kw_only=True, tag="UserSettingsCreated", tag_field="type"):
    """A user's settings were first changed (before that, they have the defaults)."""

    aggregate = "UserSettings"
    tenant_id: TenantId
    user_id: SubjectUser[UUID]


class DefaultModelChosen(_Event, frozen=True, kw_only=True, tag="DefaultModelChosen", tag_field="type"):
    """The model the user's messages get when they name none; null: none (a message must name one)."""

    aggregate = "UserSettings"
    model: str | None


class DefaultParamsSet(_Event, frozen=True, kw_only=True, tag="DefaultParamsSet", tag_field="type"):
    """The generation parameters the user's messages get where they (and the model's defaults) set none."""

    aggregate = "UserSettings"
    params: Annotated[dict[str, Any], Meta(description="Parameters as a message takes them (temperature, top_p, ...).")]


class PreferencesSet(_Event, frozen=True, kw_only=True, tag="PreferencesSet", tag_field="type"):
    """The front end's preferences document was replaced."""

    aggregate = "UserSettings"
    preferences: Personal[Annotated[dict[str, Any], Meta(description="A JSON object parley keeps and does not read.")]]


class AvatarSet(_Event, frozen=True, kw_only=True, tag="AvatarSet", tag_field="type"):
    """The user's avatar is this image (its bytes in the blob store)."""

    aggregate = "UserSettings"
    sha256: str
    media_type: Literal["image/png", "image/jpeg", "image/gif", "image/webp"]
    size: Annotated[int, Meta(ge=1, description="Bytes.")]


class AvatarRemoved(_Event, frozen=True, kw_only=True, tag="AvatarRemoved", tag_field="type"):
    """The user has no avatar any more."""

    aggregate = "UserSettings"


PromptScope = Literal["user", "tenant"]


class PromptCreated(_Event, frozen=True, kw_only=True, tag="PromptCreated", tag_field="type"):
    """A prompt was saved: a user's own (``scope`` user) or the tenant's (``scope`` tenant, by an admin)."""

    aggregate = "Prompt"
    tenant_id: TenantId
    owner_id: UUID
    scope: PromptScope
    command: Annotated[str, Meta(description="``/name``: unique among the owner's prompts (or the tenant's).")]
    title: PersonalText
    content: Personal[Annotated[str, Meta(description="The text, with ``{{name}}`` variables filled at use.")]]
    subject_id: SubjectUser[
        Annotated[UUID | None, Meta(description="Whose personal data the text is: a user prompt's owner; null for the tenant's.")]
    ]


class PromptUpdated(_Event, frozen=True, kw_only=True, tag="PromptUpdated", tag_field="type"):
    """Some of a prompt's command, title and content changed; each null did not."""

    aggregate = "Prompt"
    command: str | None
    title: Personal[str | None]
    content: Personal[str | None]


class PromptAccessGranted(_Event, frozen=True, kw_only=True, tag="PromptAccessGranted", tag_field="type"):
    """A grantee may now use (read) or change (write) the prompt."""

    aggregate = "Prompt"
    grantee: Annotated[str, Meta(description="``user:<id>``, ``role:<role>`` or ``tenant``.")]
    level: AccessLevel


class PromptAccessRevoked(_Event, frozen=True, kw_only=True, tag="PromptAccessRevoked", tag_field="type"):
    """A grant was withdrawn."""

    aggregate = "Prompt"
    grantee: str


class PromptDeleted(_Event, frozen=True, kw_only=True, tag="PromptDeleted", tag_field="type"):
    """The prompt was deleted (its command is free again)."""

    aggregate = "Prompt"


class PromptCommandClaimed(_Event, frozen=True, kw_only=True, tag="PromptCommandClaimed", tag_field="type"):
    """A command was first taken, by ``prompt_id``, among a user's prompts (``owner`` their id) or the
    tenant's (``owner`` ``tenant``)."""

    aggregate = "PromptCommand"
    tenant_id: TenantId
    owner: str
    command: str
    prompt_id: UUID


class PromptCommandReclaimed(_Event, frozen=True, kw_only=True, tag="PromptCommandReclaimed", tag_field="type"):
    """A free command was taken again, by ``prompt_id``."""

    aggregate = "PromptCommand"
    prompt_id: UUID


class PromptCommandReleased(_Event, frozen=True, kw_only=True, tag="PromptCommandReleased", tag_field="type"):
    """The command's prompt was renamed or deleted: the command is free."""

    aggregate = "PromptCommand"


# Quotas --------------------------------------------------------------------------------------------------
class QuotaPolicyCreated(_Event, frozen=True, kw_only=True, tag="QuotaPolicyCreated", tag_field="type"):
    """The tenant's quota policy was created (with the default limits)."""

    aggregate = "QuotaPolicy"
    tenant_id: TenantId
    timezone: Annotated[str, Meta(description="IANA time zone in which days roll over.")] = "UTC"


class RoleQuotaSet(_Event, frozen=True, kw_only=True, tag="RoleQuotaSet", tag_field="type"):
    """A role's daily token limit was set."""

    aggregate = "QuotaPolicy"
    role: Role
    limit: Limit


class UserQuotaSet(_Event, frozen=True, kw_only=True, tag="UserQuotaSet", tag_field="type"):
    """A user's own daily limit was set, or cleared (``clear``: the role's limit applies again)."""

    aggregate = "QuotaPolicy"
    user_id: str
    limit: Limit
    clear: bool


class ModelQuotaSet(_Event, frozen=True, kw_only=True, tag="ModelQuotaSet", tag_field="type"):
    """A per-user daily limit on one model was set (null: removed)."""

    aggregate = "QuotaPolicy"
    model: str
    limit: Limit


class TenantQuotaCapSet(_Event, frozen=True, kw_only=True, tag="TenantQuotaCapSet", tag_field="type"):
    """The tenant's daily cap over all its users was set."""

    aggregate = "QuotaPolicy"
    limit: Limit


class QuotaTimezoneSet(_Event, frozen=True, kw_only=True, tag="QuotaTimezoneSet", tag_field="type"):
    """The time zone in which the tenant's days roll over changed."""

    aggregate = "QuotaPolicy"
    timezone: str


class RateLimitsSet(_Event, frozen=True, kw_only=True, tag="RateLimitsSet", tag_field="type"):
    """Request rate limits changed (those named; others keep their values)."""

    aggregate = "QuotaPolicy"
    limits: Annotated[dict[str, int], Meta(description="Limit name (e.g. ``user_per_minute``) -> requests per minute.")]


# Retention and legal hold -------------------------------------------------------------------------------
RetentionDays = Annotated[int | None, Meta(description="Days, 1 to 36500; null: kept for ever.")]


class RetentionPolicyCreated(_Event, frozen=True, kw_only=True, tag="RetentionPolicyCreated", tag_field="type"):
    """The tenant's retention policy was created (everything kept, no holds)."""

    aggregate = "RetentionPolicy"
    tenant_id: TenantId


class RetentionPeriodsSet(_Event, frozen=True, kw_only=True, tag="RetentionPeriodsSet", tag_field="type"):
    """How long the tenant keeps chats (after their last activity) and audit rows changed."""

    aggregate = "RetentionPolicy"
    chat_days: RetentionDays
    audit_days: RetentionDays


class LegalHoldPlaced(_Event, frozen=True, kw_only=True, tag="LegalHoldPlaced", tag_field="type"):
    """A legal hold was placed on a user's data or (``user_id`` null) on the whole tenant's: retention
    deletes none of it while the hold stands."""

    aggregate = "RetentionPolicy"
    hold_id: Annotated[str, Meta(description="The hold's id (a UUID), to lift it by.")]
    user_id: Annotated[str | None, Meta(description="The held user; null: the whole tenant is held.")]
    reason: Annotated[str, Meta(description="Why, as the admin wrote it (a matter reference).")]


class LegalHoldLifted(_Event, frozen=True, kw_only=True, tag="LegalHoldLifted", tag_field="type"):
    """A legal hold was lifted."""

    aggregate = "RetentionPolicy"
    hold_id: str
    user_id: Annotated[str | None, Meta(description="The user it held; null: it held the whole tenant.")]


class AuditRowsDropped(_Event, frozen=True, kw_only=True, tag="AuditRowsDropped", tag_field="type"):
    """Retention dropped the oldest rows of the tenant's audit chain; what is kept verifies from the signed
    checkpoint named here."""

    aggregate = "RetentionPolicy"
    tenant_id: TenantId
    up_to_seq: Annotated[int, Meta(ge=1, description="Every row up to this seq of the tenant's chain was dropped.")]
    count: Annotated[int, Meta(ge=0, description="How many rows this drop removed.")]
    checkpoint_seq: Annotated[int, Meta(ge=1, description="The seq of the signed checkpoint that vouches for the kept rows.")]
    checkpoint_sha256: Annotated[str, Meta(description="The chain hash that checkpoint signed.")]


# Integrations --------------------------------------------------------------------------------------------
EventTypeFilter = Annotated[
    list[str], Meta(description="Event types or patterns (``*`` for any run of characters) the endpoint receives.")
]


class WebhookCreated(_Event, frozen=True, kw_only=True, tag="WebhookCreated", tag_field="type"):
    """A webhook endpoint was registered (its signing secret never leaves the event store)."""

    aggregate = "Webhook"
    tenant_id: TenantId
    url: str
    description: str
    event_types: EventTypeFilter
    user_ids: Annotated[list[str], Meta(description="Only events by or about these users; empty: any user.")]
    models: Annotated[list[str], Meta(description="Only events naming these models; empty: any model.")]
    include_personal: Annotated[bool, Meta(description="Whether deliveries carry personal fields opened.")]
    has_secret: bool


class WebhookChanged(_Event, frozen=True, kw_only=True, tag="WebhookChanged", tag_field="type"):
    """Some of an endpoint's settings changed: ``changes`` holds the new values of those that did (any of
    url, description, event_types, user_ids, models, include_personal)."""

    aggregate = "Webhook"
    changes: dict[str, Any]


class WebhookSecretRotated(_Event, frozen=True, kw_only=True, tag="WebhookSecretRotated", tag_field="type"):
    """The endpoint's signing secret was replaced; the previous one signs too until ``previous_valid_until``."""

    aggregate = "Webhook"
    has_secret: bool
    previous_valid_until: datetime


class WebhookEnabled(_Event, frozen=True, kw_only=True, tag="WebhookEnabled", tag_field="type"):
    """Deliveries to the endpoint resumed."""

    aggregate = "Webhook"


class WebhookDisabled(_Event, frozen=True, kw_only=True, tag="WebhookDisabled", tag_field="type"):
    """Deliveries to the endpoint stopped: by an admin (``manual``), or by the dispatcher because every
    delivery failed since ``failing_since`` (``failing``)."""

    aggregate = "Webhook"
    reason: Literal["manual", "failing"]
    failing_since: datetime | None


class WebhookDeleted(_Event, frozen=True, kw_only=True, tag="WebhookDeleted", tag_field="type"):
    """The endpoint was deleted; nothing more is sent to it."""

    aggregate = "Webhook"


class WebhookRetryRequested(_Event, frozen=True, kw_only=True, tag="WebhookRetryRequested", tag_field="type"):
    """An admin asked for one message to be sent again now."""

    aggregate = "Webhook"
    message_id: str


class WebhookReplayRequested(_Event, frozen=True, kw_only=True, tag="WebhookReplayRequested", tag_field="type"):
    """An admin asked for every matching event after a position, or since a time, up to this request, to be
    sent again (a new integration backfills history)."""

    aggregate = "Webhook"
    replay_id: str
    since: datetime | None
    after: Annotated[int | None, Meta(description="A notification id: events after it.")]


# LDAP sign-in -------------------------------------------------------------------------------------------
class LdapSettingsData(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's LDAP directory settings (the service account's password is never among them)."""

    url: Annotated[str, Meta(description="ldap://host:port or ldaps://host:port.")]
    start_tls: bool
    verify_tls: Annotated[bool, Meta(description="Whether the directory's TLS certificate is checked.")]
    tls_ca_pem: Annotated[str, Meta(description="PEM CA certificates trusted for the directory; empty: the system's.")]
    bind_dn: Annotated[str, Meta(description="The service account that searches the directory.")]
    search_base: str
    user_filter: Annotated[str, Meta(description="The user search filter; {login} stands for the escaped login.")]
    disabled_filter: Annotated[str, Meta(description="Entries also matching this filter are refused; empty: none.")]
    email_attribute: str
    name_attribute: str
    group_base: Annotated[str, Meta(description="Where groups are searched; empty: the search base.")]
    group_roles: Annotated[dict[str, Role], Meta(description="Group DN (lower-cased) -> the role its members get.")]
    default_role: Annotated[Role | None, Meta(description="The role of users created with no mapped group; null: the tenant's.")]
    create_users: Annotated[bool, Meta(description="Whether a directory user unknown here is created at sign-in.")]
    enabled: bool
    timeout_s: float
    link_password_accounts: Annotated[
        bool, Meta(description="Whether a directory sign-in may link an account here that has a local password.")
    ] = False


class LdapDirectoryConfigured(_Event, frozen=True, kw_only=True, tag="LdapDirectoryConfigured", tag_field="type"):
    """A tenant's LDAP directory was configured for the first time."""

    aggregate = "LdapDirectory"
    tenant_id: TenantId
    settings: LdapSettingsData
    has_bind_password: bool


class LdapDirectoryChanged(_Event, frozen=True, kw_only=True, tag="LdapDirectoryChanged", tag_field="type"):
    """A tenant's LDAP settings changed (all of them are stated; the password may be a new one)."""

    aggregate = "LdapDirectory"
    settings: LdapSettingsData
    has_bind_password: bool


# Sharing and ratings -------------------------------------------------------------------------------------
class SharingPolicyCreated(_Event, frozen=True, kw_only=True, tag="SharingPolicyCreated", tag_field="type"):
    """A tenant's sharing policy was first set (public links off)."""

    aggregate = "SharingPolicy"
    tenant_id: TenantId


class PublicLinksSet(_Event, frozen=True, kw_only=True, tag="PublicLinksSet", tag_field="type"):
    """A tenant admin allowed or forbade share links that anyone holding them can read without signing in."""

    aggregate = "SharingPolicy"
    allowed: bool


class ShareCreated(_Event, frozen=True, kw_only=True, tag="ShareCreated", tag_field="type"):
    """A read-only link to one branch of a chat, as it stood: the messages from the first up to
    ``leaf_message_id``."""

    aggregate = "Share"
    tenant_id: TenantId
    chat_id: SubjectChat[UUID]
    owner_id: SubjectUser[Annotated[UUID, Meta(description="The chat's owner, who shared it.")]]
    leaf_message_id: Annotated[str, Meta(description="The last message of the shared branch.")]
    title: Personal[Annotated[str, Meta(description="The chat's title when it was shared.")]]
    public: Annotated[bool, Meta(description="Readable without signing in (where the tenant allows public links).")]


class ShareRevoked(_Event, frozen=True, kw_only=True, tag="ShareRevoked", tag_field="type"):
    """The share's owner revoked the link."""

    aggregate = "Share"


RatingValue = Literal["up", "down"]


class MessageRated(_Event, frozen=True, kw_only=True, tag="MessageRated", tag_field="type"):
    """A user rated an assistant answer for the first time."""

    aggregate = "Rating"
    tenant_id: TenantId
    user_id: SubjectUser[Annotated[UUID, Meta(description="Who rated it.")]]
    chat_id: SubjectChat[UUID]
    message_id: MessageId
    model: Annotated[str, Meta(description="The model that wrote the answer (``unknown`` for a turn a client handed in).")]
    rating: RatingValue
    reason: Annotated[str | None, Meta(description="A short label (at most 100 characters).")]
    comment: Personal[Annotated[str | None, Meta(description="What the user wrote (at most 2,000 characters).")]]


class RatingChanged(_Event, frozen=True, kw_only=True, tag="RatingChanged", tag_field="type"):
    """The user rated the answer again (after changing their mind, or after removing their rating)."""

    aggregate = "Rating"
    rating: RatingValue
    reason: str | None
    comment: Personal[str | None]
    model: str


class RatingRemoved(_Event, frozen=True, kw_only=True, tag="RatingRemoved", tag_field="type"):
    """The user took their rating back."""

    aggregate = "Rating"
    model: str


# Imports from other systems -----------------------------------------------------------------------------
class ImportRecorded(_Event, frozen=True, kw_only=True, tag="ImportRecorded", tag_field="type"):
    """An import made something of a source system's thing (``parley import open-webui``)."""

    aggregate = "ImportRecord"
    tenant_id: TenantId
    source: Annotated[str, Meta(description="The system imported from (``open-webui``).")]
    kind: Annotated[str, Meta(description="What the thing is there (``user``, ``knowledge``, ``share``, ...).")]
    source_id: Annotated[str, Meta(description="The thing's id in the source system.")]
    target_id: Annotated[str, Meta(description="What it became in parley (an aggregate's id).")]


EventData: TypeAlias = Union[  # noqa: UP007 - one member a line reads better than a chain of |
    TenantCreated,
    TenantSettingsChanged,
    SelfErasureSet,
    FirstAdminClaimed,
    UserRegistered,
    PasswordChanged,
    RoleChanged,
    UserRenamed,
    UserDeactivated,
    UserReactivated,
    UserErased,
    TokensRevoked,
    EmailClaimed,
    DomainClaimed,
    InvitationIssued,
    InvitationAccepted,
    InvitationRevoked,
    ApiKeyCreated,
    ApiKeyRoleMapChanged,
    ApiKeyRevoked,
    ScimTokenIssued,
    ScimTokenRevoked,
    ScimDirectoryOpened,
    ScimUserListed,
    ScimUserNameChanged,
    ScimAccountCreated,
    ScimAccountChanged,
    ScimUserUnlisted,
    ScimGroupListed,
    ScimGroupNameChanged,
    ScimGroupUnlisted,
    GroupCreated,
    GroupRenamed,
    GroupMembersChanged,
    GroupRoleMapped,
    GroupDeleted,
    SessionStarted,
    SessionRefreshed,
    SessionEnded,
    SignInFailed,
    RevokedTokenUsed,
    ExternalIdentityLinked,
    OidcDirectoryOpened,
    OidcProviderRegistered,
    OidcProviderChanged,
    OidcProviderRemoved,
    PersonalDataExported,
    ContentAccessed,
    ChatCreated,
    ChatRenamed,
    ChatArchived,
    ChatUnarchived,
    ChatDeleted,
    MessagePosted,
    ToolResultPosted,
    ChatKnowledgeChanged,
    ChatFileAttached,
    ChatFileDetached,
    AnswerRecorded,
    ChatPinned,
    ChatUnpinned,
    ChatFiled,
    ChatTagsChanged,
    MessageImported,
    ChatImported,
    FolderTreeCreated,
    FolderCreated,
    FolderRenamed,
    FolderMoved,
    FolderDeleted,
    GenerationRequested,
    GenerationStarted,
    GenerationCancelRequested,
    GenerationCompleted,
    GenerationFailed,
    GenerationCancelled,
    KnowledgeBaseCreated,
    KnowledgeBaseUpdated,
    KnowledgeAccessGranted,
    KnowledgeAccessRevoked,
    EmbeddingChangeRequested,
    EmbeddingChangeCancelled,
    EmbeddingSwitched,
    KnowledgeBaseDeleted,
    DocumentUploaded,
    DocumentReuploaded,
    DocumentExtracted,
    DocumentChunked,
    DocumentFailed,
    DocumentDeleted,
    ProviderRegistered,
    ProviderChanged,
    ModelRegistered,
    ModelCapabilitiesChanged,
    ModelChanged,
    ModelKnowledgeChanged,
    ModelAccessGranted,
    ModelAccessRevoked,
    UserSettingsCreated,
    DefaultModelChosen,
    DefaultParamsSet,
    PreferencesSet,
    AvatarSet,
    AvatarRemoved,
    PromptCreated,
    PromptUpdated,
    PromptAccessGranted,
    PromptAccessRevoked,
    PromptDeleted,
    PromptCommandClaimed,
    PromptCommandReclaimed,
    PromptCommandReleased,
    QuotaPolicyCreated,
    RoleQuotaSet,
    UserQuotaSet,
    ModelQuotaSet,
    TenantQuotaCapSet,
    QuotaTimezoneSet,
    RateLimitsSet,
    RetentionPolicyCreated,
    RetentionPeriodsSet,
    LegalHoldPlaced,
    LegalHoldLifted,
    AuditRowsDropped,
    WebhookCreated,
    WebhookChanged,
    WebhookSecretRotated,
    WebhookEnabled,
    WebhookDisabled,
    WebhookDeleted,
    WebhookRetryRequested,
    WebhookReplayRequested,
    LdapDirectoryConfigured,
    LdapDirectoryChanged,
    SharingPolicyCreated,
    PublicLinksSet,
    ShareCreated,
    ShareRevoked,
    MessageRated,
    RatingChanged,
    RatingRemoved,
    ImportRecorded,
]
"""The data of any event, told apart by its ``type`` tag."""


# --- lookups, built once -----------------------------------------------------------------------------------
def _tag(cls: type[msgspec.Struct]) -> str:
    return str(cls.__struct_config__.tag)


_TYPES: Mapping[str, type[msgspec.Struct]] = MappingProxyType({_tag(cls): cls for cls in get_args(EventData)})


def _marked(cls: type[msgspec.Struct]) -> tuple[frozenset[str], Mapping[str, str]]:
    """(personal fields, subject kind -> field) from the fields' ``Meta.extra``."""
    personal: set[str] = set()
    subjects: dict[str, str] = {}
    info = cast(msgspec.inspect.StructType, msgspec.inspect.type_info(cls))
    for field in info.fields:
        extra = field.type.extra if isinstance(field.type, msgspec.inspect.Metadata) else None
        if not extra:
            continue
        if extra.get("personal"):
            personal.add(field.encode_name)
        if "subject" in extra:
            subjects[str(extra["subject"])] = field.encode_name
    return frozenset(personal), MappingProxyType(subjects)


_MARKS = {name: _marked(cls) for name, cls in _TYPES.items()}
_NO_SUBJECTS: Mapping[str, str] = MappingProxyType({})
_AT = re.compile(r" - at `\$\.([A-Za-z0-9_]+)")
_MISSING = re.compile(r"missing required field `([A-Za-z0-9_]+)`")


class ContractError(ValueError):
    """Event data that the contract cannot read."""

    def __init__(self, message: str, *, event_type: str, field: str | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type
        self.field = field


class UnknownEventType(ContractError):
    """No event type of this name is in the contract."""


class EventDataMismatch(ContractError):
    """The data does not fit its event type's Struct (``field`` names the first field that does not)."""


def event_types() -> Mapping[str, type[msgspec.Struct]]:
    """Event type name -> its payload Struct, for every type in the contract."""
    return _TYPES


def decode_data(event_type: str, data: Mapping[str, Any]) -> EventData:
    """The typed payload of an envelope's ``data`` (UUIDs and datetimes may be given as text or as
    themselves). Raises ``UnknownEventType`` or ``EventDataMismatch``."""
    cls = _TYPES.get(event_type)
    if cls is None:
        raise UnknownEventType(f"unknown event type {event_type!r}", event_type=event_type)
    try:
        return cast(EventData, msgspec.convert(data, cls))
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _AT.search(text) or _MISSING.search(text)
        field = found.group(1) if found else None
        raise EventDataMismatch(
            f"{event_type} data does not fit the contract" + (f" at field {field!r}" if field else "") + f": {text}",
            event_type=event_type,
            field=field,
        ) from None


def personal_fields(event_type: str) -> frozenset[str]:
    """The fields of ``event_type``'s data that hold personal data (empty for an unknown type)."""
    marks = _MARKS.get(event_type)
    return marks[0] if marks else frozenset()


def subject_fields(event_type: str) -> Mapping[str, str]:
    """Subject kind (``user``, ``chat``) -> the field of ``event_type``'s data naming that subject."""
    marks = _MARKS.get(event_type)
    return marks[1] if marks else _NO_SUBJECTS


_JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def contract_schema() -> dict[str, Any]:
    """The JSON Schema (2020-12) of an event: the envelope, and for each known ``type`` the shape of its
    ``data``. Unknown types pass with any object (new event types are an addition, not a break)."""
    names = list(_TYPES)
    _, defs = msgspec.json.schema_components(
        [EventEnvelope, *_TYPES.values()], ref_template="#/$defs/{name}"
    )
    for name, cls in _TYPES.items():
        payload = defs[name]
        # In an envelope the type is the envelope's own ``type``: ``data`` need not repeat it.
        payload["required"] = [f for f in payload.get("required", []) if f != "type"]
        if not payload["required"]:
            del payload["required"]
        payload["x-aggregate"] = cast(Any, cls).aggregate
    defs["EventData"] = {
        "description": "The data of any event; which shape applies is named by the envelope's type.",
        "anyOf": [{"$ref": f"#/$defs/{name}"} for name in names],
    }
    return {
        "$schema": _JSON_SCHEMA_DIALECT,
        "$id": f"urn:parley:events:v{SCHEMA_VERSION}",
        "title": "parley event",
        "description": (
            "An event as parley publishes it (NATS PARLEY_EVENTS, webhooks, the event feed). Fields marked "
            "x-personal may travel sealed (a string enc:v1:...); this schema describes their opened form, and "
            "erased content reads as \"[erased]\" (an empty list or object for fields that are not strings)."
        ),
        "x-schema-version": SCHEMA_VERSION,
        "x-aggregate-subjects": dict(AGGREGATE_SUBJECTS),
        "$ref": "#/$defs/EventEnvelope",
        "allOf": [
            {
                "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                "then": {"properties": {"data": {"$ref": f"#/$defs/{name}"}}},
            }
            for name in names
        ],
        "$defs": defs,
    }


WITHHELD = "[withheld]"
"""What a personal text field holds where its reader is not given personal data (a webhook endpoint not
allowed it, the event feed); a withheld list is ``[]``, an object ``{}``, anything else ``null``."""
_WITHHELD_BY_KIND: Mapping[str, Any] = MappingProxyType({"s": WITHHELD, "l": (), "d": MappingProxyType({}), "o": None})


def _withheld(value: Any) -> Any:
    if type(value) is str:
        if value.startswith("enc:v1:"):  # sealed: its kind says what it was (adapters.crypto)
            marker = _WITHHELD_BY_KIND.get(value[7:8], None)
            return [] if marker == () else {} if isinstance(marker, Mapping) else marker
        return WITHHELD
    if isinstance(value, list | tuple):
        return []
    if isinstance(value, Mapping):
        return {}
    return None


def withhold_personal(envelope: EventEnvelope) -> EventEnvelope:
    """``envelope`` with every personal field of its type (sealed or open) replaced by its withheld form,
    for readers outside parley that are not given personal data. Fields that are absent stay absent."""
    fields = personal_fields(envelope.type)
    if not fields or not any(name in envelope.data for name in fields):
        return envelope
    data = dict(envelope.data)
    for name in fields:
        if name in data:
            data[name] = _withheld(data[name])
    return msgspec.structs.replace(envelope, data=data)
