"""The policy store: objects, ordered rules, settings, whole-policy replace.

Every change follows one path: read the stored policy as a
:class:`cnnf.model.Policy`, build the new policy, check it, write the
difference, bump the revision and record the change (who, when, before,
after) — all in one transaction. A check failure raises before anything is
written, and any database error rolls the whole change back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field, StrictBool, TypeAdapter
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, lazyload

from cnnf.console.services import formats
from cnnf.console.services.errors import Conflict, InvalidInput, NotFound
from cnnf.console.store.models import ChangeRow, ObjectRow, RuleRow, SettingsRow
from cnnf.errors import FieldError, PolicyValidationError
from cnnf.model import BlockMode, Effect, NetworkObject, Policy, Rule, RuleKind
from cnnf.model.rule import JSON_INTEGER, MAX_RULE_ID, PolicyModel

Now = Callable[[], datetime]
OBJECT_ADAPTER: TypeAdapter[NetworkObject] = TypeAdapter(NetworkObject)
LIST_NAMES = {RuleKind.CONTAINER: "containerRules", RuleKind.HOST: "hostRules"}


def utcnow() -> datetime:
    return datetime.now(UTC)


class RuleDraft(Rule):
    """A rule as a client sends it: the id may be left out (the next free one is used)."""

    id: Annotated[int | None, Field(ge=1, le=MAX_RULE_ID), JSON_INTEGER] = None  # type: ignore[assignment]
    staged: Annotated[StrictBool, Field(description=(
        "evaluated as if in force, its verdicts reported as \"would\" verdicts, never "
        "enforced; promote it with POST /rules/{kind}/{id}/promote. Left out of an "
        "update, the rule keeps its current value (a client that does not know the "
        "field never puts a staged rule in force); left out of a new rule: false"))] = False


class Settings(PolicyModel):
    """The policy's switches: enforcement per workload kind, no-match effect, block mode."""

    # Strict: 0, 1 and "yes" are refused, as the schema (boolean) says.
    container_enabled: StrictBool
    host_enabled: StrictBool
    default_effect: Effect
    block_mode: BlockMode
    staged_default_effect: Annotated[Effect | None, Field(description=(
        "the default effect being tried out: for connections no rule matches, "
        "Defenders report what it would do (\"would\" verdicts on flows and audits) "
        "without enforcing it; null: nothing staged. Promote it with "
        "POST /settings/promote. Left out of PUT /settings, the staged default "
        "stays as it is (a client that does not know the field never drops it)"))] = None


# --- one serializer per resource: rows <-> policy model ------------------------------


def object_from_row(row: ObjectRow) -> NetworkObject:
    data = {"name": row.name, "kind": row.kind, "description": row.description, **row.body}
    return OBJECT_ADAPTER.validate_python(data)


def _object_columns(obj: NetworkObject) -> dict[str, Any]:
    data = obj.model_dump(mode="json", by_alias=True)
    return {
        "name": data.pop("name"),
        "kind": data.pop("kind"),
        "description": data.pop("description", ""),
        "body": data,
    }


# The rule columns policy() reads, in one plain SELECT (no ORM objects and no
# joined objects per rule: a 20,000-rule policy read spent seconds decoding each
# rule's source and destination objects again).
_RULE_COLUMNS = (RuleRow.kind, RuleRow.rule_id, RuleRow.name, RuleRow.src_id, RuleRow.dst_id,
                 RuleRow.ports, RuleRow.effect, RuleRow.disabled, RuleRow.staged,
                 RuleRow.notes, RuleRow.owner, RuleRow.modified)


def _rule(row: Any, names: dict[int, str]) -> Rule:
    return Rule.model_validate(
        {
            "id": row.rule_id,
            "name": row.name,
            "src": names[row.src_id],
            "dst": names[row.dst_id],
            "ports": row.ports,
            "effect": row.effect,
            "disabled": row.disabled,
            "staged": row.staged,
            "notes": row.notes,
            "owner": row.owner,
            "modified": row.modified,
        }
    )


def _rule_columns(rule: Rule) -> dict[str, Any]:
    data = rule.model_dump(mode="json", by_alias=True)
    return {
        "rule_id": rule.id,
        "name": rule.name,
        "ports": data["ports"],
        "effect": rule.effect.value,
        "disabled": rule.disabled,
        "staged": rule.staged,
        "notes": rule.notes,
        "owner": rule.owner,
        "modified": rule.modified,
    }


def settings_of(policy: Policy) -> Settings:
    return Settings(
        container_enabled=policy.container_enabled,
        host_enabled=policy.host_enabled,
        default_effect=policy.default_effect,
        block_mode=policy.block_mode,
        staged_default_effect=policy.staged_default_effect,
    )


def _rules(policy: Policy, kind: RuleKind) -> tuple[Rule, ...]:
    return policy.container_rules if kind is RuleKind.CONTAINER else policy.host_rules


def _with_rules(policy: Policy, kind: RuleKind, rules: list[Rule]) -> Policy:
    field_name = "container_rules" if kind is RuleKind.CONTAINER else "host_rules"
    return policy.model_copy(update={field_name: tuple(rules)})


def _json(value: PolicyModel | None) -> Any:
    return None if value is None else value.model_dump(mode="json", by_alias=True)


def diff(old: Policy, new: Policy) -> dict[str, Any]:
    """What replacing ``old`` by ``new`` changes, by name and rule id."""
    out: dict[str, Any] = {}
    before, after = _json(settings_of(old)), _json(settings_of(new))
    out["settings"] = {
        k: {"before": before[k], "after": after[k]} for k in before if before[k] != after[k]
    }
    old_objects = {o.name: o for o in old.objects}
    new_objects = {o.name: o for o in new.objects}
    out["objects"] = {
        "added": [n for n in new_objects if n not in old_objects],
        "removed": [n for n in old_objects if n not in new_objects],
        "changed": [
            n for n in new_objects if n in old_objects and old_objects[n] != new_objects[n]
        ],
    }
    for kind, list_name in LIST_NAMES.items():
        olds = {r.id: r for r in _rules(old, kind)}
        news = {r.id: r for r in _rules(new, kind)}
        common_old = [r.id for r in _rules(old, kind) if r.id in news]
        common_new = [r.id for r in _rules(new, kind) if r.id in olds]
        out[list_name] = {
            "added": [i for i in news if i not in olds],
            "removed": [i for i in olds if i not in news],
            "changed": [i for i in news if i in olds and olds[i] != news[i]],
            "reordered": common_old != common_new,
        }
    return out


def diff_is_empty(d: dict[str, Any]) -> bool:
    if d["settings"]:
        return False
    return not any(
        v for section in ("objects", *LIST_NAMES.values()) for v in d[section].values()
    )


def _expect(policy: Policy, expected_revision: int | None) -> None:
    """A write made against what its caller saw at ``expected_revision``:
    refused (409, nothing written) when the policy has moved on since, or when
    that revision was never reached (a mistyped one)."""
    if expected_revision is not None and expected_revision > policy.revision:
        raise Conflict(f"revision {expected_revision} does not exist (the policy is at "
                       f"{policy.revision})")
    if expected_revision is not None and policy.revision != expected_revision:
        raise Conflict(f"the policy is at revision {policy.revision}, not "
                       f"{expected_revision}: it changed meanwhile (review it and try again)")


class PolicyService:
    def __init__(self, session: Session, actor: str = "system", now: Now = utcnow) -> None:
        self.session = session
        self.actor = actor
        self.now = now

    # --- reading ---------------------------------------------------------------------

    def _settings_row(self) -> SettingsRow:
        row = self.session.get(SettingsRow, 1)
        if row is None:  # the migration creates it; recreate if someone deleted it
            row = SettingsRow(id=1, container_enabled=False, host_enabled=False,
                              default_effect="allow", block_mode="reset", revision=0)
            self.session.add(row)
            self.session.flush()
        return row

    def revision(self) -> int:
        return self._settings_row().revision

    def policy(self) -> Policy:
        settings = self._settings_row()
        objects = self.session.scalars(select(ObjectRow).order_by(ObjectRow.name)).all()
        names = {o.id: o.name for o in objects}
        rules = self.session.execute(
            select(*_RULE_COLUMNS).order_by(RuleRow.kind, RuleRow.position)
        ).all()
        return Policy(
            container_enabled=settings.container_enabled,
            host_enabled=settings.host_enabled,
            default_effect=Effect(settings.default_effect),
            block_mode=BlockMode(settings.block_mode),
            staged_default_effect=(None if settings.staged_default_effect is None
                                   else Effect(settings.staged_default_effect)),
            objects=tuple(object_from_row(r) for r in objects),
            container_rules=tuple(_rule(r, names) for r in rules if r.kind == "container"),
            host_rules=tuple(_rule(r, names) for r in rules if r.kind == "host"),
            revision=settings.revision,
        )

    def settings(self) -> Settings:
        return settings_of(self.policy())

    def get_object(self, name: str) -> NetworkObject:
        row = self.session.scalar(select(ObjectRow).where(ObjectRow.name == name))
        if row is None:
            raise NotFound(f"no network object named {name!r}")
        return object_from_row(row)

    def get_rule(self, kind: RuleKind, rule_id: int) -> tuple[int, Rule]:
        for position, rule in enumerate(_rules(self.policy(), kind)):
            if rule.id == rule_id:
                return position, rule
        raise NotFound(f"no {kind} rule with id {rule_id}")

    # --- writing: every change goes through _apply -----------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One policy change at a time: every change first takes the write lock on
        the settings row (a row lock on PostgreSQL, the database write lock on
        SQLite) and only then reads the policy it changes, so concurrent changes
        queue instead of overwriting each other."""
        if self.session.in_transaction():
            self.session.commit()  # end any read snapshot taken before the lock
        try:
            self.session.execute(
                update(SettingsRow).where(SettingsRow.id == 1)
                .values(revision=SettingsRow.revision)
            )
            self.session.expire_all()
            yield
            self.session.commit()
        except BaseException:
            self.session.rollback()
            raise

    def _apply(
        self, new: Policy, action: str, resource: str, before: Any, after: Any, *,
        error_prefix: str = "", document: bool = False,
    ) -> Policy:
        """Store ``new`` as one change. A whole ``document`` that does not hold
        together is invalid input (422); a change to one rule or object that clashes
        with the rest of the stored policy (an object that does not exist or is of
        another kind, a name in use) conflicts with the stored state (409)."""
        errors = formats.check(new)
        if errors:
            if error_prefix:
                errors = [_strip(e, error_prefix) for e in errors]
            if not document:
                raise Conflict("; ".join(str(e) for e in errors), errors)
            raise PolicyValidationError(errors)
        self._write(new)
        settings = self._settings_row()
        settings.revision += 1
        self.session.add(
            ChangeRow(at=self.now(), actor=self.actor, action=action, resource=resource,
                      revision=settings.revision, before=before, after=after)
        )
        self.session.flush()
        return new.model_copy(update={"revision": settings.revision})

    def _write(self, new: Policy) -> None:
        rows = {r.name: r for r in self.session.scalars(select(ObjectRow))}
        wanted = {o.name: o for o in new.objects}
        for name, obj in wanted.items():
            obj_columns = _object_columns(obj)
            row = rows.get(name)
            if row is None:
                row = ObjectRow(**obj_columns)
                self.session.add(row)
                rows[name] = row
            else:
                for attr, value in obj_columns.items():
                    if getattr(row, attr) != value:
                        setattr(row, attr, value)
        self.session.flush()
        existing = {(r.kind, r.rule_id): r for r in self.session.scalars(
            select(RuleRow).options(lazyload(RuleRow.src), lazyload(RuleRow.dst)))}
        kept = set()
        # New rules go in as one bulk INSERT (an executemany), not one ORM object
        # each: a 20,000-rule import spent most of its time building and flushing those.
        added: list[dict[str, Any]] = []
        for kind in RuleKind:
            for position, rule in enumerate(_rules(new, kind)):
                key = (kind.value, rule.id)
                kept.add(key)
                columns = _rule_columns(rule)
                columns.update(position=position, src_id=rows[rule.src].id,
                               dst_id=rows[rule.dst].id)
                rule_row = existing.get(key)
                if rule_row is None:
                    added.append({"kind": kind.value, **columns})
                else:
                    for k, value in columns.items():
                        if getattr(rule_row, k) != value:
                            setattr(rule_row, k, value)
        for rule_key, stale in existing.items():
            if rule_key not in kept:
                self.session.delete(stale)
        self.session.flush()
        if added:
            self.session.execute(insert(RuleRow), added)
        for name, row in rows.items():
            if name not in wanted:
                self.session.delete(row)
        settings = self._settings_row()
        settings.container_enabled = new.container_enabled
        settings.host_enabled = new.host_enabled
        settings.default_effect = new.default_effect.value
        settings.block_mode = new.block_mode.value
        settings.staged_default_effect = (None if new.staged_default_effect is None
                                          else new.staged_default_effect.value)
        self.session.flush()

    # --- objects ---------------------------------------------------------------------

    def create_object(self, obj: NetworkObject) -> NetworkObject:
        with self._transaction():
            old = self.policy()
            if old.object(obj.name) is not None:
                raise Conflict(f"a network object named {obj.name!r} already exists")
            new = old.model_copy(update={"objects": (*old.objects, obj)})
            self._apply(new, "object.create", f"objects/{obj.name}", None, _json(obj))
        return obj

    def update_object(self, name: str, obj: NetworkObject) -> NetworkObject:
        """Replace object ``name``; a new name is carried into the rules that use it."""
        with self._transaction():
            old = self.policy()
            current = old.object(name)
            if current is None:
                raise NotFound(f"no network object named {name!r}")
            if obj.name != name and old.object(obj.name) is not None:
                raise Conflict(f"a network object named {obj.name!r} already exists")
            objects = tuple(obj if o.name == name else o for o in old.objects)
            update: dict[str, Any] = {"objects": objects}
            if obj.name != name:
                for kind in RuleKind:
                    rules = [_renamed(r, name, obj.name) for r in _rules(old, kind)]
                    field_name = "container_rules" if kind is RuleKind.CONTAINER else "host_rules"
                    update[field_name] = tuple(rules)
            new = old.model_copy(update=update)
            self._apply(new, "object.update", f"objects/{name}", _json(current), _json(obj))
        return obj

    def delete_object(self, name: str) -> None:
        with self._transaction():
            old = self.policy()
            current = old.object(name)
            if current is None:
                raise NotFound(f"no network object named {name!r}")
            users = [
                f"{kind} rule {r.id} ({r.name})"
                for kind in RuleKind
                for r in _rules(old, kind)
                if name in (r.src, r.dst)
            ]
            if users:
                raise Conflict(f"network object {name!r} is used by " + ", ".join(users))
            new = old.model_copy(
                update={"objects": tuple(o for o in old.objects if o.name != name)}
            )
            self._apply(new, "object.delete", f"objects/{name}", _json(current), None)

    # --- rules -----------------------------------------------------------------------

    def _draft_to_rule(self, draft: RuleDraft, rule_id: int) -> Rule:
        data = draft.model_dump(by_alias=False)
        data.update(id=rule_id, modified=self.now(), owner=draft.owner or self.actor)
        return Rule.model_validate(data)

    def create_rule(self, kind: RuleKind, draft: RuleDraft, position: int | None = None) -> Rule:
        with self._transaction():
            old = self.policy()
            rules = list(_rules(old, kind))
            if position is None:
                position = len(rules)
            _check_position("position", position, len(rules))
            if draft.id is not None and any(r.id == draft.id for r in rules):
                raise Conflict(f"a {kind} rule with id {draft.id} already exists")
            rule_id = draft.id if draft.id is not None else self._next_rule_id(kind, rules)
            rule = self._draft_to_rule(draft, rule_id)
            rules.insert(position, rule)
            self._apply(
                _with_rules(old, kind, rules), "rule.create", f"rules/{kind}/{rule.id}",
                None, _json(rule), error_prefix=f"{LIST_NAMES[kind]}[{position}]",
            )
        return rule

    def _next_rule_id(self, kind: RuleKind, rules: list[Rule]) -> int:
        # Ids are never reused within a kind while the rule exists; max+1 keeps them short.
        stored = self.session.scalar(
            select(func.max(RuleRow.rule_id)).where(RuleRow.kind == kind.value)
        )
        return max([stored or 0, *(r.id for r in rules)]) + 1

    def update_rule(self, kind: RuleKind, rule_id: int, draft: RuleDraft) -> Rule:
        with self._transaction():
            old = self.policy()
            rules = list(_rules(old, kind))
            index = _index(rules, kind, rule_id)
            if draft.id is not None and draft.id != rule_id:
                raise InvalidInput([FieldError("id", f"{draft.id} differs from the rule's "
                                                      f"id {rule_id} in the path")])
            current = rules[index]
            if "staged" not in draft.model_fields_set:
                draft = draft.model_copy(update={"staged": current.staged})
            rule = self._draft_to_rule(draft, rule_id)
            rules[index] = rule
            self._apply(
                _with_rules(old, kind, rules), "rule.update", f"rules/{kind}/{rule_id}",
                _json(current), _json(rule), error_prefix=f"{LIST_NAMES[kind]}[{index}]",
            )
        return rule

    def delete_rule(self, kind: RuleKind, rule_id: int) -> None:
        with self._transaction():
            old = self.policy()
            rules = list(_rules(old, kind))
            current = rules.pop(_index(rules, kind, rule_id))
            self._apply(_with_rules(old, kind, rules), "rule.delete",
                        f"rules/{kind}/{rule_id}", _json(current), None)

    def move_rule(self, kind: RuleKind, rule_id: int, position: int) -> list[Rule]:
        with self._transaction():
            old = self.policy()
            rules = list(_rules(old, kind))
            index = _index(rules, kind, rule_id)
            _check_position("position", position, len(rules) - 1)
            rule = rules.pop(index)
            rules.insert(position, rule)
            self._apply(_with_rules(old, kind, rules), "rule.move", f"rules/{kind}/{rule_id}",
                        {"position": index}, {"position": position})
        return rules

    def promote_rule(self, kind: RuleKind, rule_id: int,
                     expected_revision: int | None = None) -> Rule:
        """Put a staged rule in force: one change, one revision. A rule that is
        not staged is refused (409): promoting twice is a mistake worth naming.
        With ``expected_revision``, refused (409) unless the policy is still at
        it: the rule was reviewed at that revision."""
        with self._transaction():
            old = self.policy()
            _expect(old, expected_revision)
            rules = list(_rules(old, kind))
            index = _index(rules, kind, rule_id)
            current = rules[index]
            if not current.staged:
                state = ("it is disabled (enable it to enforce it)" if current.disabled
                         else "it is in force already")
                raise Conflict(f"{kind} rule {rule_id} ({current.name}) is not staged: "
                               f"{state}")
            rule = current.model_copy(update={"staged": False, "modified": self.now()})
            rules[index] = rule
            self._apply(_with_rules(old, kind, rules), "rule.promote",
                        f"rules/{kind}/{rule_id}", _json(current), _json(rule))
        return rule

    def promote_default(self, expected_revision: int | None = None) -> Settings:
        """Make the staged default effect the default effect: one change, one
        revision. Refused (409) when no default effect is staged, or with
        ``expected_revision`` when the policy is no longer at it."""
        with self._transaction():
            old = self.policy()
            _expect(old, expected_revision)
            staged = old.staged_default_effect
            if staged is None:
                raise Conflict("no default effect is staged (settings.stagedDefaultEffect "
                               "is null)")
            new = old.model_copy(update={"default_effect": staged,
                                         "staged_default_effect": None})
            self._apply(new, "settings.promote", "settings", _json(settings_of(old)),
                        _json(settings_of(new)))
        return settings_of(new)

    # --- settings and the whole policy -----------------------------------------------

    def put_settings(self, settings: Settings) -> Settings:
        with self._transaction():
            old = self.policy()
            if "staged_default_effect" not in settings.model_fields_set:
                settings = settings.model_copy(
                    update={"staged_default_effect": old.staged_default_effect})
            new = old.model_copy(update=settings.model_dump(by_alias=False))
            self._apply(new, "settings.update", "settings", _json(settings_of(old)),
                        _json(settings))
        return settings

    def replace(self, policy: Policy, action: str = "policy.replace", *,
                expected_revision: int | None = None,
                also: Callable[[Policy], None] | None = None) -> Policy:
        """Replace everything (PUT policy, import) in one transaction; with
        ``expected_revision``, only if the stored policy is still at it (else
        :class:`Conflict`, nothing written). ``also`` writes what belongs to the
        same change (given the stored policy) in that transaction: if it fails,
        nothing is written."""
        with self._transaction():
            old = self.policy()
            _expect(old, expected_revision)
            new = policy.model_copy(update={"revision": old.revision})
            summary = diff(old, new)
            stored = self._apply(new, action, "policy", _json(old), summary, document=True)
            if also is not None:
                also(stored)
                self.session.flush()
        return stored

    def preview(self, policy: Policy) -> tuple[dict[str, Any], list[FieldError]]:
        """The diff and errors an import would produce; nothing is written."""
        old = self.policy()
        return diff(old, policy), formats.check(policy)




def _renamed(rule: Rule, old: str, new: str) -> Rule:
    update = {}
    if rule.src == old:
        update["src"] = new
    if rule.dst == old:
        update["dst"] = new
    return rule.model_copy(update=update) if update else rule


def _index(rules: list[Rule], kind: RuleKind, rule_id: int) -> int:
    for i, rule in enumerate(rules):
        if rule.id == rule_id:
            return i
    raise NotFound(f"no {kind} rule with id {rule_id}")


def _check_position(name: str, position: int, highest: int) -> None:
    # Which positions exist depends on the stored rules: a conflict, not bad input.
    if not 0 <= position <= max(highest, 0):
        error = FieldError(name, f"{position} is outside 0..{max(highest, 0)}")
        raise Conflict(str(error), [error])


def _strip(error: FieldError, prefix: str) -> FieldError:
    if error.path == prefix:
        return FieldError("", error.message)
    if error.path.startswith(prefix + "."):
        return FieldError(error.path[len(prefix) + 1 :], error.message)
    return error
