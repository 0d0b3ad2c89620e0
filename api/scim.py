"""The SCIM 2.0 protocol at the edge (RFC 7643/7644), with ``scim2-models``: the resources parley serves,
its discovery documents, and the translation between SCIM payloads and the provisioning service.

Why scim2-models: SCIM's own grammar — filters (``userName sw "a" and active eq true``, value paths),
PATCH paths with value selectors (``members[value eq "..."]``), attribute projection (``attributes``,
``excludedAttributes``) and the per-operation mutability/returned rules — is what it implements and
what a hand-written parser would get subtly wrong; scim2-tester, the conformance checker, is built on
the same models. It is pydantic, not msgspec: it stays here at the edge (the SCIM routes read and write
bytes themselves), and nothing past ``application/`` sees a SCIM model.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Union

from pydantic import Field, ValidationError
from scim2_models import (
    URN,
    AuthenticationScheme,
    Bulk,
    CaseExact,
    ChangePassword,
    ComplexAttribute,
    Error,
    ETag,
    Filter,
    Group,
    Meta,
    Mutability,
    Patch,
    Reference,
    Required,
    Resource,
    ResourceType,
    Schema,
    ServiceProviderConfig,
    Sort,
    Uniqueness,
)

from application.scim import ScimGroupData, ScimGroupView, ScimUserData, ScimUserView
from domain.errors import Invalid

__all__ = [
    "SCIM_MEDIA_TYPE",
    "MAX_RESULTS",
    "ParleyUser",
    "ParleyName",
    "ParleyEmail",
    "Group",
    "service_provider_config",
    "schemas",
    "resource_types",
    "user_resource",
    "group_resource",
    "user_data",
    "group_data",
    "validation_error",
]

SCIM_MEDIA_TYPE = "application/scim+json"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
MAX_RESULTS = 200
"""The most resources one list answers (``filter.maxResults``); ``count`` above it is lowered to it."""


class ParleyName(ComplexAttribute):
    """The parts of a name parley keeps."""

    given_name: str | None = None
    family_name: str | None = None


class ParleyEmail(ComplexAttribute):
    value: Annotated[str | None, Required.true] = None
    primary: bool | None = None


class ParleyUser(Resource[Any]):
    """The User resource as parley serves it: the core schema's attributes parley keeps, no more (the
    discovery documents say so, and a client sends nothing else). ``emails`` is required: the primary one
    becomes the parley account's e-mail at creation (how parley tells accounts apart and matches OIDC and
    LDAP sign-ins); later changes are kept as the provider's, the account's own e-mail stays."""

    __schema__ = URN("urn:ietf:params:scim:schemas:core:2.0:User")

    user_name: Annotated[str | None, Uniqueness.server, Required.true] = None
    name: ParleyName | None = None
    display_name: str | None = None
    active: bool | None = None
    emails: Annotated[list[ParleyEmail] | None, Required.true] = None


class ParleyGroupMember(ComplexAttribute):
    """A member: a user (parley has no nested groups)."""

    value: Annotated[str | None, Mutability.immutable, CaseExact.true] = None
    ref: Annotated[
        Reference[Union["User", "Group"]] | None,  # type: ignore[type-arg]  # noqa: F821, UP007, UP037 - names, as scim2-models takes them
        Mutability.immutable,
    ] = Field(None, serialization_alias="$ref", validation_alias="$ref")
    type: Annotated[str | None, Mutability.immutable] = Field(None, examples=["User"])


class ParleyGroup(Group):
    """The core Group: ``displayName`` (unique, case aside) and ``members`` (users only)."""

    display_name: Annotated[str | None, Required.true, Uniqueness.server, CaseExact.false] = None
    members: list[ParleyGroupMember] | None = None  # type: ignore[assignment]
    Members: ClassVar[type[ComplexAttribute]] = ParleyGroupMember


def service_provider_config(base_url: str) -> ServiceProviderConfig:
    return ServiceProviderConfig(
        documentation_uri="https://github.com/parley/parley#scim-provisioning",
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=False),
        etag=ETag(supported=False),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="SCIM token",
                description="A tenant's SCIM token (ps_...), issued by a tenant admin: Authorization: Bearer <token>",
                primary=True,
            )
        ],
        meta=Meta(resource_type="ServiceProviderConfig", location=f"{base_url}/ServiceProviderConfig"),
    )


def schemas(base_url: str) -> list[Schema]:
    found = []
    for model in (ParleyUser, ParleyGroup):
        schema = model.to_schema()
        schema.meta = Meta(resource_type="Schema", location=f"{base_url}/Schemas/{schema.id}")
        found.append(schema)
    return found


def resource_types(base_url: str) -> list[ResourceType]:
    found = []
    for name, endpoint, model in (("User", "/Users", ParleyUser), ("Group", "/Groups", ParleyGroup)):
        rt = ResourceType(
            id=name, name=name, endpoint=endpoint, description=f"parley {name.lower()}s", schema_=model.__schema__
        )
        rt.meta = Meta(resource_type="ResourceType", location=f"{base_url}/ResourceTypes/{name}")
        found.append(rt)
    return found


def user_resource(view: ScimUserView, base_url: str) -> ParleyUser:
    name = ParleyName(given_name=view.given_name, family_name=view.family_name)
    return ParleyUser(
        id=str(view.id),
        external_id=view.external_id,
        user_name=view.user_name,
        name=name if view.given_name or view.family_name else None,
        display_name=view.display_name,
        active=view.active,
        emails=[ParleyEmail(value=e["value"], primary=e.get("primary")) for e in view.emails] or None,
        meta=Meta(
            resource_type="User", created=view.created, last_modified=view.last_modified,
            location=f"{base_url}/Users/{view.id}",
        ),
    )


def group_resource(view: ScimGroupView, base_url: str) -> ParleyGroup:
    return ParleyGroup(
        id=str(view.id),
        external_id=view.external_id,
        display_name=view.display_name,
        members=[
            ParleyGroupMember(value=uid, ref=f"{base_url}/Users/{uid}", type="User") for uid in view.members
        ],
        meta=Meta(
            resource_type="Group", created=view.created, last_modified=view.last_modified,
            location=f"{base_url}/Groups/{view.id}",
        ),
    )


def user_data(user: ParleyUser) -> ScimUserData:
    return ScimUserData(
        user_name=user.user_name or "",
        emails=[{"value": e.value, "primary": e.primary} for e in user.emails or [] if e.value],
        display_name=user.display_name,
        external_id=user.external_id,
        given_name=user.name.given_name if user.name else None,
        family_name=user.name.family_name if user.name else None,
        active=user.active,
    )


def group_data(group: ParleyGroup) -> ScimGroupData:
    members = []
    for member in group.members or []:
        if member.type not in (None, "User"):
            raise Invalid("INVALID_VALUE", "a group's members are users", field="members")
        if member.value:
            members.append(member.value)
    return ScimGroupData(display_name=group.display_name or "", members=members, external_id=group.external_id)


def validation_error(exc: ValidationError) -> dict[str, Any]:
    """A pydantic error on a SCIM payload as a SCIM error body (400, the scimType scim2-models names)."""
    errors = exc.errors()
    if not errors:
        return {"schemas": [ERROR_SCHEMA], "status": "400", "scimType": "invalidValue", "detail": "invalid payload"}
    body = Error.from_validation_error(errors[0]).model_dump()
    body.setdefault("schemas", [ERROR_SCHEMA])
    return body

