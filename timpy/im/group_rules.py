"""The rules of groups, as pure functions over an immutable ``Group``.

Who may join, invite, approve, kick, mute, name admins, hand over the group
or dissolve it, and who may send. Every operation takes the acting user and
returns the new group, or raises ``RequestError`` with a code the client sees
and a text that says what to do; a refused operation changes nothing. The
storage and delivery of groups are built on these (``timpy.im.groups``).

Roles: one owner; admins the owner names; members. Join policies: ``open``
(anyone joins), ``approval`` (a request that an admin approves), ``invite``
(only members' invitations: any member's in an open group, an admin's
otherwise). Names are normalized user names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from types import MappingProxyType

from timpy.errors import Code, RequestError
from timpy.im import fields

MAX_GROUP_NAME = 100


class Role(IntEnum):
    MEMBER = 0
    ADMIN = 1
    OWNER = 2


class JoinPolicy(StrEnum):
    OPEN = "open"
    APPROVAL = "approval"
    INVITE = "invite"


@dataclass(frozen=True)
class Group:
    group_id: str
    name: str
    members: Mapping[str, Role]
    policy: JoinPolicy = JoinPolicy.APPROVAL
    max_size: int = 500
    requests: frozenset[str] = frozenset()  # pending join requests (approval policy)
    muted: frozenset[str] = frozenset()
    all_muted: bool = False
    dissolved: bool = False
    profile: Mapping[str, str] = field(default_factory=dict)  # avatar, notice, description, or an application's keys

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", MappingProxyType(dict(self.members)))
        object.__setattr__(self, "profile", MappingProxyType(dict(self.profile)))

    @property
    def owner(self) -> str:
        return next(u for u, r in self.members.items() if r == Role.OWNER)

    def role(self, user: str) -> Role | None:
        return self.members.get(user)

    def is_admin(self, user: str) -> bool:
        return self.members.get(user, Role.MEMBER) >= Role.ADMIN


def _refuse(text: str, code: Code = Code.NOT_ALLOWED) -> RequestError:
    return RequestError(text, code)


def _live(group: Group) -> None:
    if group.dissolved:
        raise _refuse("that group was dissolved", Code.NO_SUCH_GROUP)


def _member(group: Group, user: str) -> Role:
    _live(group)
    role = group.members.get(user)
    if role is None:
        raise _refuse("you are not a member of that group", Code.NOT_A_MEMBER)
    return role


def _admin(group: Group, user: str) -> None:
    if _member(group, user) < Role.ADMIN:
        raise _refuse("only the group's owner and admins may do that")


def _owner(group: Group, user: str) -> None:
    if _member(group, user) != Role.OWNER:
        raise _refuse("only the group's owner may do that")


def _room_for(group: Group, count: int = 1) -> None:
    if len(group.members) + count > group.max_size:
        raise _refuse(f"the group is full ({group.max_size} members at most)", Code.GROUP_FULL)


def _with_members(group: Group, members: dict[str, Role], unmute: frozenset[str] = frozenset()) -> Group:
    """``group`` with a new member map; who left is no longer muted or asking."""
    gone = set(group.members) - set(members)
    return replace(
        group,
        members=members,
        muted=frozenset(group.muted - gone - unmute),
        requests=frozenset(group.requests - set(members)),
    )


def check_name(name: str) -> str:
    name = str(name).strip()
    if not 0 < len(name) <= MAX_GROUP_NAME:
        raise _refuse(f"a group name has 1 to {MAX_GROUP_NAME} characters", Code.BAD_REQUEST)
    return name


def create(
    group_id: str, owner: str, name: str, policy: JoinPolicy = JoinPolicy.APPROVAL,
    members: Iterable[str] = (), max_size: int = 500,
) -> Group:
    """A new group with ``owner`` and the initial ``members``."""
    initial = {u: Role.MEMBER for u in members if u != owner}
    initial[owner] = Role.OWNER
    if len(initial) > max_size:
        raise _refuse(f"a group has {max_size} members at most", Code.GROUP_FULL)
    return Group(group_id, check_name(name), initial, JoinPolicy(policy), max_size)


def join(group: Group, user: str) -> Group:
    """Join an open group, or ask to join one that needs approval."""
    _live(group)
    if user in group.members:
        return group
    if group.policy == JoinPolicy.OPEN:
        _room_for(group)
        return _with_members(group, {**group.members, user: Role.MEMBER})
    if group.policy == JoinPolicy.APPROVAL:
        return replace(group, requests=group.requests | {user})
    raise _refuse("this group takes members by invitation only")


def approve(group: Group, actor: str, user: str) -> Group:
    _admin(group, actor)
    if user not in group.requests:
        raise _refuse(f"{user} has not asked to join", Code.BAD_REQUEST)
    _room_for(group)
    return _with_members(group, {**group.members, user: Role.MEMBER})


def reject(group: Group, actor: str, user: str) -> Group:
    _admin(group, actor)
    if user not in group.requests:
        raise _refuse(f"{user} has not asked to join", Code.BAD_REQUEST)
    return replace(group, requests=group.requests - {user})


def invite(group: Group, actor: str, users: Iterable[str]) -> Group:
    """Add users directly: admins always; any member in an open group."""
    role = _member(group, actor)
    if role < Role.ADMIN and group.policy != JoinPolicy.OPEN:
        raise _refuse("only the group's owner and admins may invite to this group")
    new = [u for u in dict.fromkeys(users) if u not in group.members]
    _room_for(group, len(new))
    return _with_members(group, {**group.members, **{u: Role.MEMBER for u in new}})


def leave(group: Group, user: str) -> Group:
    if _member(group, user) == Role.OWNER:
        raise _refuse("the owner cannot leave: hand the group over (transfer) or dissolve it")
    members = dict(group.members)
    del members[user]
    return _with_members(group, members)


def kick(group: Group, actor: str, user: str) -> Group:
    """The owner removes anyone else; an admin removes plain members."""
    role = _member(group, actor)
    target = _member(group, user)
    if user == actor:
        raise _refuse("to leave a group, leave it", Code.BAD_REQUEST)
    if role <= target:
        raise _refuse("you may only remove members below your own role")
    members = dict(group.members)
    del members[user]
    return _with_members(group, members)


def set_admin(group: Group, actor: str, user: str, admin: bool) -> Group:
    _owner(group, actor)
    if _member(group, user) == Role.OWNER:
        raise _refuse("the owner is above admins", Code.BAD_REQUEST)
    return _with_members(group, {**group.members, user: Role.ADMIN if admin else Role.MEMBER})


def transfer(group: Group, actor: str, new_owner: str) -> Group:
    """Hand the group over to a member; the old owner becomes an admin."""
    _owner(group, actor)
    if new_owner == actor:
        return group
    _member(group, new_owner)
    return _with_members(group, {**group.members, actor: Role.ADMIN, new_owner: Role.OWNER}, frozenset({new_owner}))


def mute(group: Group, actor: str, user: str, muted: bool) -> Group:
    """An admin mutes plain members; the owner mutes admins too."""
    role = _member(group, actor)
    target = _member(group, user)
    if role < Role.ADMIN or role <= target:
        raise _refuse("you may only mute members below your own role")
    return replace(group, muted=(group.muted | {user}) if muted else (group.muted - {user}))


def mute_all(group: Group, actor: str, muted: bool) -> Group:
    """Only admins and the owner may speak while the whole group is muted."""
    _admin(group, actor)
    return replace(group, all_muted=bool(muted))


def rename(group: Group, actor: str, name: str) -> Group:
    _admin(group, actor)
    return replace(group, name=check_name(name))


MAX_GROUP_PROFILE_FIELDS = 16
MAX_GROUP_PROFILE_VALUE = 2048


def set_profile(group: Group, actor: str, changes: Mapping[str, str]) -> Group:
    """An admin changes the group's profile fields ("" removes one)."""
    _admin(group, actor)
    fields.check_changes(changes, MAX_GROUP_PROFILE_VALUE, "group profile")
    return replace(group, profile=fields.merge(group.profile, changes, MAX_GROUP_PROFILE_FIELDS, "group profile"))


def set_policy(group: Group, actor: str, policy: JoinPolicy) -> Group:
    _admin(group, actor)
    return replace(group, policy=JoinPolicy(policy))


def dissolve(group: Group, actor: str) -> Group:
    _owner(group, actor)
    return replace(group, dissolved=True, requests=frozenset(), muted=frozenset())


def check_send(group: Group, user: str) -> None:
    """May ``user`` send to the group now? Raises why not."""
    role = _member(group, user)
    if user in group.muted:
        raise _refuse("you are muted in this group", Code.MUTED)
    if group.all_muted and role < Role.ADMIN:
        raise _refuse("the group is muted: only its owner and admins may speak", Code.MUTED)
