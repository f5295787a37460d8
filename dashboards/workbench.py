"""The auditor's workbench: claim the next item, look at it, answer, move on.

Flow of one item (docs/dashboard.md has the picture):

1. "Next item" claims one item with a lease (``store.claim``); a reload gives the same item back.
2. While it is open, the lease is renewed on every rerun and every ``lease_s / 3`` seconds in the
   background (a fragment, so the form is untouched). A lease that ran out is taken again when the
   item is still open and nobody else took it (``store.reclaim``), so a submit after a long pause
   is recorded; otherwise the item is dropped with a warning saying why (another auditor has it,
   it was decided) instead of letting the auditor work on something they can no longer submit.
3. The verdict id is made when the form is first shown and kept in the session, so a double
   submit (a double click, a rerun interrupted after the write) is one verdict in the store.
4. Submitting the answer unchanged accepts the model's answer, a different answer corrects it
   (``editors.verdict_for``); "Reject" says no valid answer exists; "Skip" gives the item back.
5. After a verdict the next item is claimed at once with the same filters.

A malformed item (details of the wrong shape, an image that does not decode, an answer of the
wrong type) never stops the page: each step that draws it is guarded, says in one line what it
could not show and why, and the verdict form is drawn anyway — at least **Reject** and **Skip**,
so the item can be judged or handed back and never blocks the queue.

QC samples can be audited blind (``DashboardConfig.blind_qc``): the model's answer is hidden
and the editor starts empty, so agreement with the model is not inflated by seeing it first —
except for kinds that cannot be audited blind (``TaskView.supports_blind``: captions).
Whether an item is gold is never shown (``Claim.is_gold`` stays in the store's bookkeeping), nor
anything that would tell it: no age (a gold item's would be the time since an admin added it),
no store item id (gold ids are old and small) — the store serves gold only in place of a traffic
item of the same model, version and route, so badges and queue order match too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import streamlit as st

from auditstream.errors import LeaseNotHeld, PermissionDenied, VerdictConflict
from auditstream.wire import ModelInput, Prediction, Route, TaskKind, VerdictKind, decode_input
from dashboards import auth_ui, editors, outage, render
from dashboards import tasks as views
from dashboards.context import DashboardContext
from dashboards.markup import md_code, md_text
from dashboards.table_shortcuts import table_shortcuts_ui
from store.accounts import WRITERS, User, require_role
from store import Claim, VerdictResult

log = logging.getLogger(__name__)

CLAIM = "wb_claim"  # the open Claim
VERDICT_ID = "wb_verdict_id"  # verdict id of the form shown for the open claim
MODELS = "wb_models"  # the model filter's choices, kept for a store outage
NOTICE = "wb_notice"  # (kind, text) shown once at the top after a verdict or a lost lease
UNSENT = "wb_unsent"  # request id whose submit failed while the store was down: ask for it again
LAST_ACTION = "wb_last_action"  # time.time() of the last full rerun: a click or submit (not a timed renewal)
ROUTE_FILTERS = {"All routes": None, "Deferred (HUMAN)": Route.HUMAN, "QC samples (AUTO_QC)": Route.AUTO_QC}


@dataclass(frozen=True)
class Submission:
    """What the auditor submitted: ``answer`` (kind accept/correct derived from it), reject or skip."""

    action: str  # "answer" | "reject" | "skip"
    raw: Any = None


# --------------------------------------------------------------------------------------------
# writes (role-checked here for the message, and again inside the store's transaction)


def claim_next(ctx: DashboardContext, user: User, model: str | None, route: Route | None) -> Claim | None:
    require_role(user, *WRITERS, action="claim audit items")
    claim = ctx.store.claim(user, ctx.config.lease_s, time.time(), model=model, route=route)
    st.session_state[CLAIM] = claim
    st.session_state[VERDICT_ID] = ctx.store.new_verdict_id() if claim else None
    return claim


def submit_verdict(ctx: DashboardContext, user: User, claim: Claim, verdict_id: str, kind: VerdictKind,
                   corrected: Any) -> VerdictResult:  # fmt: skip
    """Renew the lease, then record the verdict (idempotent on ``verdict_id``)."""
    require_role(user, *WRITERS, action="record verdicts")
    now = time.time()
    ctx.store.renew(claim.item_id, user, ctx.config.lease_s, now)  # a lost lease shows up as LeaseNotHeld below
    return ctx.store.record_verdict(verdict_id, claim.item_id, user, kind, corrected, now)


def recover_lease(ctx: DashboardContext, user: User, claim: Claim) -> tuple[Claim | None, str]:
    """After a renewal failed: the item leased to ``user`` again when it is still open and nobody
    else took it (``store.reclaim``; kept in the session, with the same verdict id, so the form and
    what was typed stay), else None and why, in words for the auditor (no store item id)."""
    again = ctx.store.reclaim(claim.item_id, user, ctx.config.lease_s, time.time())
    if again is not None:
        st.session_state[CLAIM] = again
        return again, ""
    item = ctx.store.item(claim.item_id)
    if item is None or item.state != "open":
        return None, "the item was decided meanwhile"
    if item.lease_owner is not None and item.lease_owner != user.name and (item.lease_expires_s or 0.0) > time.time():
        return None, "another auditor has it now"
    if ctx.store.verdicts(item_id=claim.item_id, auditor=user.name):
        return None, "you have already answered or skipped it (in another tab?)"
    return None, "you took another item meanwhile (in another tab?)"


def item_open(user: User) -> bool:
    """Whether this session has an item open on the workbench (the app then offers no other page:
    the verdict form's typed values reach the server only on submit, so leaving would drop them)."""
    return user.role in WRITERS and st.session_state.get(CLAIM) is not None


def put_back(ctx: DashboardContext, user: User, claim: Claim) -> None:
    """Give the open item back to the queue without a verdict (unlike Skip, you may get it again)."""
    ctx.store.release(claim.item_id, user)
    _forget_claim()


def release_at_logout(ctx: DashboardContext, user: User) -> None:
    """Give the session's open item back to the queue as its user logs out (it waited --lease-s
    for a tab nobody can submit from any more). Best effort: a store that cannot be reached lets
    the lease run out instead of keeping the user signed in."""
    claim = st.session_state.get(CLAIM)
    if claim is None or user.role not in WRITERS:
        return
    try:
        ctx.store.release(claim.item_id, user)
    except Exception:  # noqa: BLE001 - see the docstring
        log.warning("item %s: not released at logout", claim.item_id, exc_info=True)
    _forget_claim()


def _forget_claim() -> None:
    st.session_state.pop(CLAIM, None)
    st.session_state.pop(VERDICT_ID, None)


# --------------------------------------------------------------------------------------------
# read helpers


def item_prediction(claim: Claim) -> tuple[Prediction, ModelInput]:
    """The stored item as the wire's Prediction and decoded input, for the render functions."""
    item = claim.item
    prediction = Prediction(
        request_id=item.request_id, model=item.model, model_version=item.model_version, task=item.task,
        output=item.output, confidence=item.confidence, route=item.route, reason=item.reason,
        qc_inclusion_prob=item.qc_inclusion_prob, created_at_s=item.created_at_s, details=item.details,
        episode_key=item.episode_key, step=item.step,
    )  # fmt: skip
    return prediction, decode_input(item.input)


def is_blind(ctx: DashboardContext, claim: Claim) -> bool:
    """Whether this item is audited blind: a QC sample with ``--blind-qc``, of a kind that can be
    (``TaskView.supports_blind``: captions cannot). An unknown kind stays blind."""
    if not (ctx.config.blind_qc and claim.item.route is Route.AUTO_QC):
        return False
    try:
        return views.lookup(claim.item.task).supports_blind
    except Exception:  # noqa: BLE001 - an unknown kind: its form says so; keep the answer hidden
        return True


# --------------------------------------------------------------------------------------------
# widgets


def filters_ui(models: Sequence[str]) -> tuple[str | None, Route | None]:
    """Model and route filters for the next claim (sidebar)."""
    st.sidebar.subheader("Queue filters")
    chosen = st.session_state.get("wb_model")
    # The current choice stays offered after its queue emptied (a model without a registry card
    # then leaves the store's list): dropping it would switch the filter to all models silently.
    extra = [chosen] if chosen not in (None, "All models") and chosen not in models else []
    model = st.sidebar.selectbox("Model", ["All models", *sorted([*models, *extra])], key="wb_model")
    route = st.sidebar.radio("Route", list(ROUTE_FILTERS), key="wb_route")
    return (None if model == "All models" else model), ROUTE_FILTERS[route]


def answer_editor_ui(task: TaskKind, prediction: Prediction, value: ModelInput, labels: Sequence[str], blind: bool,
                     key: str) -> tuple[Any, Sequence[str]]:  # fmt: skip
    """The task kind's answer editor, pre-filled with the model's answer unless blind.
    Returns (raw editor value, the choices of a picker)."""
    return views.lookup(task).editor_ui(prediction, value, labels, blind, key)


# (shortcut, label) of the verdict buttons
SUBMIT = ("Ctrl+Enter", "Submit answer")
REJECT = ("Alt+X", "Reject — no valid answer")
SKIP = ("Alt+S", "Skip — give it back to the queue")


def verdict_form_ui(claim: Claim, prediction: Prediction | None, value: ModelInput | None, labels: Sequence[str],
                    blind: bool, verdict_id: str) -> Submission | None:  # fmt: skip
    """The verdict form; returns what was submitted this run, if anything. Without a readable
    prediction, or when the answer editor cannot be drawn, the form still offers Reject and Skip."""
    with st.form(f"verdict-{verdict_id}", enter_to_submit=True, border=True):
        st.markdown("**Your answer**" if blind else "**Your answer** — leave it as is to accept, change it to correct")
        editor = None
        if prediction is not None:
            editor = guarded("the answer editor", claim, answer_editor_ui, prediction.task, prediction, value, labels,
                             blind, key=f"answer-{verdict_id}")  # fmt: skip
        raw, choices = editor if editor is not None else (None, ())
        answer = st.form_submit_button(SUBMIT[1], type="primary", width="stretch", shortcut=SUBMIT[0],
                                       disabled=editor is None,
                                       help="Enter in the text field also submits")  # fmt: skip
        reject = st.form_submit_button(REJECT[1], width="stretch", shortcut=REJECT[0],
                                       help="The input is unreadable or none of the answers fits")  # fmt: skip
    skip = st.button(SKIP[1], shortcut=SKIP[0], key=f"skip-{verdict_id}", width="stretch")
    table_shortcuts_ui([SUBMIT, REJECT, SKIP])  # a box table keeps the keys to itself otherwise
    if answer:
        return Submission("answer", (raw, choices))
    if reject:
        return Submission("reject")
    if skip:
        return Submission("skip")
    return None


def item_header_ui(claim: Claim, blind: bool, lease_s: float) -> None:
    """What kind of item this is: deferred or QC sample, model, review round, request, lease.
    No age and no store item id: both would date a gold item (see the module docstring)."""
    item = claim.item
    badges = st.container(horizontal=True)
    if item.route is Route.HUMAN:
        badges.badge("Deferred: someone waits for this answer", icon=":material/hourglass_top:", color="orange")
    else:
        badges.badge("QC sample of an auto-accepted answer", icon=":material/fact_check:", color="violet")
    if blind:
        badges.badge("Blind: answer first", icon=":material/visibility_off:", color="gray")
    if claim.review_round == 2:
        badges.badge("Second review", icon=":material/group:", color="blue")
    # The item's words go into markdown escaped (dashboards/markup.py): a request id is the client's.
    badges.markdown(f":gray-badge[{md_text(f'{item.model} v{item.model_version} · {item.task}')}]", width="content")
    # Not the lease's expiry: the page renews it in the background, so a time drawn once went stale.
    st.caption(f"Request {md_code(item.request_id)} · yours while this page is open "
               f"(back to the queue {lease_s:.0f} s after it closes)")  # fmt: skip



# --------------------------------------------------------------------------------------------
# the page


def page(ctx: DashboardContext, user: User) -> None:
    st.title("Workbench")
    if user.role not in WRITERS:
        st.warning(f"Your role ({user.role.value}) can read the overview but not audit items.")
        return
    # A full run of the page is a user's action (a click, a submit, a reload); the timed lease
    # renewal is a fragment run and does not come here, so an idle tab does not count as active.
    st.session_state[LAST_ACTION] = time.time()
    try:
        st.session_state[MODELS] = ctx.models()
    except Exception as e:
        if not outage.is_store_down(e):
            raise
        outage.store_down_ui(e, retry=lambda: ctx.store.accounts.get(user.name))
    model, route = filters_ui(st.session_state.get(MODELS, []))  # the last list while the store is down
    notice = st.session_state.pop(NOTICE, None)
    if notice:
        getattr(st, notice[0])(notice[1])
    claim: Claim | None = st.session_state.get(CLAIM)
    if claim is not None:
        try:
            claim = _renewed(ctx, user, claim, model, route)
        except Exception as e:
            if not outage.is_store_down(e):
                raise
            # Keep the open item and its form as they are (what was typed included); the retry
            # reruns the app once the store answers, and the submit can be pressed again then.
            outage.store_down_ui(e, retry=lambda: ctx.store.accounts.get(user.name))
    # After the renewal, which may have lost the item: the warning only beside the form it is about
    # (the form's verdict id, not the request id: one request may have items of several versions).
    unsent = st.session_state.get(UNSENT)
    if unsent is not None and (st.session_state.get(CLAIM) is None or st.session_state.get(VERDICT_ID) != unsent):
        st.session_state.pop(UNSENT, None)  # another item or form now: that answer went with its form
    elif unsent is not None and not st.session_state.get(outage.SHOWN):
        st.warning("Your last answer on this item was **not recorded**: the audit store could not be reached "
                   "then. It is back: check the answer below and submit it again.")
    if claim is not None:
        st.sidebar.caption("The Overview opens once this item is answered, skipped or put back: "
                           "leaving the page would drop what you typed.")
        if st.sidebar.button("Put this item back", key="wb_put_back",
                             help="Back to the queue without a verdict; the Overview is offered again"):
            try:
                put_back(ctx, user, claim)
            except Exception as e:
                if not outage.is_store_down(e):
                    raise
                outage.store_down_ui(e, retry=lambda: ctx.store.accounts.get(user.name))
            else:
                st.rerun()
    if claim is None:
        st.write(queue_line(ctx.store.queue_depth(model, route),
                            ctx.store.available_depth(user.name, time.time(), model, route)))
        if st.button("Next item", type="primary", shortcut="Alt+N", key="next"):
            if claim_next(ctx, user, model, route) is not None:
                st.rerun()  # redraw without the button and the queue line
            st.info("Nothing to audit for these filters right now. The queue fills from the live stream.")
        return
    _item_ui(ctx, user, claim, model, route)


def queue_line(depth: int, available: int) -> str:
    """How many items wait for the filters, and how many of them "Next item" can give this auditor
    (the claim's rule: not held by another auditor, not answered or skipped by her)."""
    line = f"**{depth}** item{'s' if depth != 1 else ''} waiting for these filters"
    if available == depth:
        return line + "."
    return (f"{line}, **{available}** of them available to you (the others are held by other auditors "
            "or you already answered or skipped them).")


def _renewed(ctx: DashboardContext, user: User, claim: Claim, model: str | None, route: Route | None) -> Claim | None:
    """The open claim with its lease renewed (or taken again: :func:`recover_lease`); else None
    after saying why, or the next claim when this form's verdict is already in."""
    if ctx.store.renew(claim.item_id, user, ctx.config.lease_s, time.time()):
        return claim
    verdict_id = st.session_state.get(VERDICT_ID)
    if any(v.verdict_id == verdict_id for v in ctx.store.verdicts(item_id=claim.item_id, auditor=user.name)):
        # A rerun of a form whose verdict is already in (a double click that interrupted the
        # first run after its write): the verdict stands once; move on to the next item.
        st.info("Your verdict on the item you had open was already recorded; kept once.")
        _forget_claim()
        claim = claim_next(ctx, user, model, route)
    else:
        claim, why = recover_lease(ctx, user, claim)
        if claim is None:
            st.warning(f"Your lease on the item you had open ran out and {why}; nothing was recorded. "
                       "Claim the next item.")  # fmt: skip
            _forget_claim()
    return claim


MALFORMED_HINT = "Its data is malformed: reject it (no valid answer) or skip it."


def guarded(what: str, claim: Claim, draw: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``draw(*args, **kwargs)``, or ``None`` after a one-line error saying what could not be shown
    and why. One malformed item must never take the verdict form (and the queue) down with it, so
    any exception counts here; Streamlit's rerun and stop are BaseExceptions and pass through."""
    try:
        return draw(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - see the docstring; the server log keeps the traceback
        log.warning("item %s: cannot show %s", claim.item_id, what, exc_info=True)
        detail = str(e) if len(str(e)) <= 300 else str(e)[:297] + "..."
        st.error(f"Cannot show {what} of this item: {md_text(type(e).__name__)}: {md_text(detail)}. {MALFORMED_HINT}")
        return None


def _item_ui(ctx: DashboardContext, user: User, claim: Claim, model: str | None, route: Route | None) -> None:
    verdict_id = st.session_state.get(VERDICT_ID) or ctx.store.new_verdict_id()
    st.session_state[VERDICT_ID] = verdict_id
    blind = is_blind(ctx, claim)
    guarded("the item's header", claim, item_header_ui, claim, blind, ctx.config.lease_s)
    # Renew the lease in the background while the auditor looks (a fragment rerun keeps the form).
    st.fragment(run_every=renew_every_s(ctx.config.lease_s))(keep_lease)(ctx, user, claim)
    read = guarded("the stored item", claim, item_prediction, claim)
    prediction, value = read if read is not None else (None, None)
    labels = ctx.labels(claim.item.model, claim.item.model_version)
    left, right = st.columns([3, 2], gap="large")
    with left:
        if prediction is not None:
            guarded("the input", claim, render.render_input, prediction, value, labels, blind)
    with right:
        view = None if blind or prediction is None else guarded("the model's answer", claim, render.answer_view,
                                                                prediction, value, labels)  # fmt: skip
        if view is not None:
            guarded("the model's answer", claim, render.render_answer, view)
        submission = verdict_form_ui(claim, prediction, value, labels, blind, verdict_id)
        if view is not None:
            guarded("the alternatives", claim, render.render_alternatives, view)
    if submission is not None:
        _handle(ctx, user, claim, prediction, verdict_id, submission, blind, model, route)


def renew_every_s(lease_s: float) -> float:
    """Seconds between background renewals of the open item's lease: a third of it, so one
    renewal may come late or not at all and the next still finds the lease live. (It was
    ``max(5, lease_s / 3)``: for the shortest leases --lease-s allows, 10 to 15 s, half of one,
    and a single renewal late by 5 s lost a 10 s lease.) At least 3.3 s apart: --lease-s >= 10 s."""
    return lease_s / 3


def idle_too_long(idle_s: float, last_action_s: float | None, now_s: float) -> bool:
    """Whether the open item has had no click or submit for ``idle_s`` (0: never too long)."""
    return idle_s > 0 and last_action_s is not None and now_s - last_action_s >= idle_s


def _keep_lease(ctx: DashboardContext, user: User, claim: Claim) -> None:
    auth_ui.recheck(ctx.store.accounts, user)  # a timed rerun skips current_user: who is this now?
    if idle_too_long(ctx.config.idle_s, st.session_state.get(LAST_ACTION), time.time()):
        # An open tab nobody uses must not hold the item forever: give it back and say so.
        ctx.store.release(claim.item_id, user)
        _forget_claim()
        st.session_state[NOTICE] = ("warning", f"The item you had open went back to the queue: no click or submit "
                                               f"for {ctx.config.idle_s / 60:g} min. Nothing was recorded.")
        st.rerun()
    if ctx.store.renew(claim.item_id, user, ctx.config.lease_s, time.time()):
        return
    # Ran out (a sleeping laptop): take it again while nobody else has; else say why it is gone.
    again, why = recover_lease(ctx, user, claim)
    if again is None:
        st.warning(f"Your lease on this item is gone: {why}. Your submit will not be recorded — "
                   "take the next item.")  # fmt: skip


# What the fragment runs: a store outage in a timed renewal says so in its place (dashboards/outage.py).
keep_lease = outage.guarded_fragment(_keep_lease)


def _handle(ctx: DashboardContext, user: User, claim: Claim, prediction: Prediction | None, verdict_id: str,
            submission: Submission, blind: bool, model: str | None, route: Route | None) -> None:  # fmt: skip
    if submission.action == "answer":
        if prediction is None:  # the button is disabled then; a stale form's click lands here
            st.error(f"This item cannot be read, so no answer can be checked. {MALFORMED_HINT}")
            return
        task = prediction.task
        raw, choices = submission.raw
        try:
            # answer in the model's own form: a label name where the model answers with names
            answer = editors.parse_answer(task, raw, choices, as_label=isinstance(prediction.output, str))
        except ValueError as e:
            st.error(md_text(e))  # the form keeps what was typed: nothing is lost
            return
        decided = guarded("the comparison with the model's answer", claim, editors.verdict_for, task,
                          prediction.output, answer, prediction.details)  # fmt: skip
        if decided is None:
            return
        kind, corrected = decided
    else:
        kind, corrected = (VerdictKind.REJECT if submission.action == "reject" else VerdictKind.SKIP), None
    try:
        result = submit_verdict(ctx, user, claim, verdict_id, kind, corrected)
    except (LeaseNotHeld, VerdictConflict) as e:
        st.session_state[NOTICE] = ("warning", _refused_text(e))
        _forget_claim()
        st.rerun()
    except PermissionDenied as e:
        st.error(md_text(e))
        return
    except Exception as e:
        if not outage.is_store_down(e):
            raise
        outage.store_down_ui(e, retry=lambda: ctx.store.accounts.get(user.name))
        st.session_state[UNSENT] = verdict_id  # said once the store is back (page)
        return  # the form keeps what was typed; submit again once the store is back
    st.session_state.pop(UNSENT, None)
    st.session_state[NOTICE] = ("success", _recorded_text(result, prediction, blind))
    _forget_claim()
    claim_next(ctx, user, model, route)  # the store never hands back an item this auditor answered or skipped
    st.rerun()


def _refused_text(e: LeaseNotHeld | VerdictConflict) -> str:
    """Why a verdict was not recorded, without the store's item id (it would date a gold item)."""
    if isinstance(e, VerdictConflict):
        return "This form was already used for another verdict; nothing was recorded. Claim the next item."
    why = ("nobody holds it any more (released or decided)" if e.holder is None
           else "another auditor holds it now" if e.holder != e.auditor else "your lease on it expired")
    return f"Your verdict was not recorded: {why}. Claim the next item."


def _recorded_text(result: VerdictResult, prediction: Prediction | None, blind: bool) -> str:
    try:
        return _verdict_text(result, prediction, blind)
    except Exception:  # noqa: BLE001 - a malformed answer's text; the verdict itself is recorded
        return f"Verdict recorded ({result.verdict.kind.value})."


def _verdict_text(result: VerdictResult, prediction: Prediction | None, blind: bool) -> str:
    verdict = result.verdict
    what = {VerdictKind.ACCEPT: "accepted", VerdictKind.CORRECT: "corrected", VerdictKind.REJECT: "rejected",
            VerdictKind.SKIP: "skipped"}[verdict.kind]  # fmt: skip
    text = f"Recorded: {what}"
    if prediction is None:
        return text + "."
    if verdict.kind is VerdictKind.CORRECT:
        text += f" → {md_text(render.answer_text(prediction.task, verdict.corrected_output))}"
    if blind and verdict.kind in (VerdictKind.ACCEPT, VerdictKind.CORRECT):
        agreed = "you agreed with" if verdict.kind is VerdictKind.ACCEPT else "you disagreed with"
        text += f" ({agreed} the model's {md_text(render.answer_text(prediction.task, prediction.output))})"
    if not result.recorded:
        text += " — already recorded by an earlier submit; kept once"
    return text + "."
