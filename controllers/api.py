"""Lago-compatible REST API: ``/api/billing/v1/*`` (JS client) and ``/api/billing/api/v1/*`` (Python client).

Thin transport: authenticate the bearer key, parse and validate with ``core.lago``, call
the models as the service's technical user, serialise with ``core.lago``. Every answer,
including unknown routes, crashes and conflicts Odoo could not resolve by replaying the
request, is a Lago JSON envelope; an error rolls the whole request back.

Odoo replays a request whose transaction hit a serialization failure, a deadlock, a lock
timeout or a ``ConcurrencyError`` (``odoo.service.model.retrying``, up to 5 tries): the body is
read once and kept on the request so that every replay sees the bytes that were sent, and when
the tries run out the client gets a 503 with ``Retry-After`` (``error_response``).
"""
import logging
import re
from datetime import datetime, timezone

from psycopg2 import IntegrityError, OperationalError, errorcodes
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from odoo import SUPERUSER_ID, http
from odoo.exceptions import ConcurrencyError, UserError, ValidationError
from odoo.http import request
from odoo.modules.module import get_manifest

from ..core import errors, keys, lago
from ..models import batch_jobs
from ..models.fusion_billing_event import IngestConflict
from . import openapi

_logger = logging.getLogger(__name__)

PREFIXES = ("/api/billing/v1", "/api/billing/api/v1")
MAX_BODY_BYTES = lago.MAX_BODY_BYTES
# Concurrency errors Odoo retries itself (it replays the whole request on a fresh transaction).
RETRYABLE_PGCODES = {errorcodes.SERIALIZATION_FAILURE, errorcodes.DEADLOCK_DETECTED,
                     errorcodes.LOCK_NOT_AVAILABLE}
# Handlers that create an object by its external id: two simultaneous first creations collide on
# the unique index; the loser is replayed (ConcurrencyError) and finds the winner's committed row.
# A collision the replay does not resolve is a row this handler cannot see holding the key: a 422.
CREATING_HANDLERS = {"customer_upsert", "subscription_create", "reconciliation_report"}
# Unique index → the payload key whose value is taken (a collision that persists after a replay).
UNIQUE_KEYS = {"sale_order_x_fc_external_uniq": "external_id",
               "fusion_billing_account_link_service_external_uniq": "external_id",
               "fusion_billing_reconciliation_row_uniq": "external_subscription_id"}
# Handlers whose transaction runs READ COMMITTED (they only read, and insert rows deduplicated by a
# unique index): an identical event a concurrent request inserted is waited for and seen, where
# Odoo's REPEATABLE READ would fail the request and replay it (fusion.billing.event._ingest).
READ_COMMITTED_HANDLERS = {"event_create", "event_batch"}


class LagoResponse(HTTPException):
    """Carries a Lago error envelope through Odoo's dispatcher, which rolls the transaction back."""

    def __init__(self, error):
        super().__init__(response=json_response(error.body, error.status))
        self.code = error.status


class Router:
    """(verb, 'customers/<external_id>/current_usage') → handler name; matching is by segment."""

    def __init__(self, table):
        self.table = list(table)
        self.routes = [(verb, self._compile(pattern), handler) for verb, pattern, handler in table]

    @staticmethod
    def _compile(pattern):
        regex = re.sub(r"<(\w+)>", r"(?P<\1>[^/]+)", pattern)
        return re.compile(f"^{regex}$")

    def match(self, verb, path):
        """Return (handler, kwargs); raise 404 for unknown paths, 405 for a known path and another verb."""
        path_known = False
        for route_verb, regex, handler in self.routes:
            found = regex.match(path)
            if found:
                path_known = True
                if route_verb == verb:
                    return handler, found.groupdict()
        if path_known:
            raise lago.method_not_allowed("method_not_allowed")
        raise lago.not_found("resource")


ROUTER = Router([
    ("GET", "health", "health"),
    ("GET", "openapi.json", "openapi"),
    ("POST", "customers", "customer_upsert"),
    ("GET", "customers", "customer_list"),
    ("GET", "customers/<external_id>", "customer_find"),
    ("DELETE", "customers/<external_id>", "customer_delete"),
    ("GET", "customers/<external_id>/current_usage", "customer_current_usage"),
    ("GET", "customers/<external_id>/past_usage", "customer_past_usage"),
    ("GET", "customers/<external_id>/invoices", "customer_invoices"),
    ("POST", "subscriptions", "subscription_create"),
    ("GET", "subscriptions", "subscription_list"),
    ("GET", "subscriptions/<external_id>", "subscription_find"),
    ("DELETE", "subscriptions/<external_id>", "subscription_terminate"),
    ("POST", "events", "event_create"),
    ("POST", "events/batch", "event_batch"),
    ("GET", "events", "event_list"),
    ("GET", "events/<transaction_id>", "event_find"),
    ("GET", "plans", "plan_list"),
    ("GET", "plans/<code>", "plan_find"),
    ("GET", "billable_metrics", "metric_list"),
    ("GET", "billable_metrics/<code>", "metric_find"),
    ("GET", "invoices", "invoice_list"),
    ("GET", "invoices/<lago_id>", "invoice_find"),
    ("POST", "invoices/<lago_id>/download", "invoice_download"),
    ("POST", "reconciliation/app_bills", "reconciliation_report"),
])
PUBLIC_HANDLERS = {"health", "openapi"}


class BillingApi(http.Controller):

    @http.route([f"{prefix}/<path:subpath>" for prefix in PREFIXES] + list(PREFIXES),
                type="http", auth="none", methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                csrf=False, save_session=False, readonly=False, max_content_length=MAX_BODY_BYTES)
    def dispatch(self, subpath="", **_query):
        handler = None
        try:
            handler, kwargs = ROUTER.match(request.httprequest.method, subpath.strip("/"))
            if handler in READ_COMMITTED_HANDLERS:
                batch_jobs.start_read_committed(request.env.cr)
            lago.check_text_params(kwargs, kind="path")
            lago.check_text_params(request.httprequest.args.to_dict(flat=False))
            service = None if handler in PUBLIC_HANDLERS else self._authenticate()
            body = getattr(self, handler)(service, **kwargs)
            if handler in CREATING_HANDLERS:
                request.env.flush_all()  # a collision surfaces here, where it becomes a replay
            return json_response(body)
        except lago.LagoError as error:
            raise LagoResponse(error) from None
        except errors.BillingError as error:
            raise LagoResponse(lago.from_domain_error(error)) from None
        except IngestConflict as conflict:
            raise LagoResponse(lago.validation(conflict_details(conflict))) from None
        except (UserError, ValidationError) as error:
            raise LagoResponse(lago.validation({"base": [str(error.args[0] if error.args else error)]})) from None
        except ConcurrencyError:
            raise  # Odoo replays the request
        except Exception as error:
            if getattr(error, "pgcode", None) in RETRYABLE_PGCODES:
                raise  # Odoo replays the request
            if getattr(error, "pgcode", None) == errorcodes.UNIQUE_VIOLATION and handler in CREATING_HANDLERS:
                constraint = error.diag.constraint_name
                if getattr(request, "_fc_replayed_collision", False):  # the replay collided again
                    raise LagoResponse(lago.validation({UNIQUE_KEYS.get(constraint, "base"): ["value_already_exist"]})) \
                        from None
                request._fc_replayed_collision = True  # the request object outlives Odoo's replays
                raise ConcurrencyError(f"simultaneous first creation: {constraint}") from error
            _logger.exception("Billing API crashed on %s %s", request.httprequest.method, subpath)
            raise LagoResponse(lago.internal_error()) from None

    # ------------------------------------------------------------------ plumbing
    def _authenticate(self):
        """The service of the bearer key; the rest of the request runs as that service's technical
        user (never as superuser): record rules keep it to its own service and company even where a
        handler forgets to filter. Only the key lookup itself runs as superuser."""
        token = keys.bearer_token(request.httprequest.headers.get("Authorization"))
        service = request.env(user=SUPERUSER_ID)["fusion.billing.service"]._authenticate(token) if token else None
        if not service:
            raise lago.unauthorized()
        if service.api_user_id:
            user = service.api_user_id
        else:  # a key made before API users existed: two first calls at once collide on its login
            try:
                user = service._fc_api_user()
                service.env.flush_all()
            except IntegrityError as error:
                raise ConcurrencyError("simultaneous creation of the API user") from error
        request.update_env(user=user.id)
        request.update_context(allowed_company_ids=service.company_id.ids)
        return request.env["fusion.billing.service"].browse(service.id)

    def _raw_body(self):
        """The body, read once (at most ``MAX_BODY_BYTES``) and kept on the request: a request Odoo
        replays after a conflict must see the bytes that were sent, not an emptied stream.

        Never read further than the limit, whatever the client declares: a chunked body has no
        Content-Length, and werkzeug before 2.3 (Odoo 19 pins 2.0.2/2.2.2 below Python 3.12)
        applies no ``max_content_length`` to it; 3.x does (the route sets it, so there every
        reader, Odoo's form parsing included, stops at the limit)."""
        raw = getattr(request, "_fc_raw_body", None)
        if raw is None:
            length = request.httprequest.content_length
            if length and length > MAX_BODY_BYTES:
                raise lago.payload_too_large()
            try:
                raw = _read_at_most(request.httprequest._HTTPRequest__wrapped.stream, MAX_BODY_BYTES + 1)
            except RequestEntityTooLarge:
                raise lago.payload_too_large() from None
            if len(raw) > MAX_BODY_BYTES:
                raise lago.payload_too_large()
            request._fc_raw_body = raw
        return raw

    def _json(self):
        return lago.parse_json(self._raw_body(), max_bytes=MAX_BODY_BYTES)

    def _body(self, root):
        return lago.require_root(self._json(), root)

    def _query(self):
        return request.httprequest.args

    def _page(self, model, domain, serialise, root, order=None):
        page, per_page = lago.parse_pagination(self._query().to_dict(flat=False))
        total = model.search_count(domain)
        records = model.search(domain, offset=(page - 1) * per_page, limit=per_page, order=order)
        return {root: [serialise(record) for record in records], "meta": lago.meta(page, per_page, total)}

    def _customer(self, service, external_id):
        link = request.env["fusion.billing.account.link"]._api_find(service, external_id)
        if not link:
            raise lago.not_found("customer")
        return link

    # ------------------------------------------------------------------ public
    def health(self, _service):
        return {"status": "ok", "version": get_manifest("fusion_centralize_billing")["version"]}

    def openapi(self, _service):
        return openapi.document(request.httprequest.path.rsplit("/", 1)[0])

    # ------------------------------------------------------------------ customers
    def customer_upsert(self, service):
        clean = lago.validate_customer(self._body("customer"), timezones=_timezones())
        link = request.env["fusion.billing.account.link"]._api_upsert(service, clean)
        return {"customer": lago.customer(link._api_values())}

    def customer_list(self, service):
        domain = [("service_id", "=", service.id)]
        query = self._query()
        if query.get("external_id"):
            domain.append(("external_id", "=", query["external_id"]))
        if query.get("search_term"):
            term = query["search_term"]
            domain += ["|", "|", ("external_id", "ilike", term), ("api_name", "ilike", term), ("email", "ilike", term)]
        return self._page(request.env["fusion.billing.account.link"], domain,
                          lambda link: lago.customer(link._api_values()), "customers", order="id")

    def customer_find(self, service, external_id):
        return {"customer": lago.customer(self._customer(service, external_id)._api_values())}

    def customer_delete(self, service, external_id):
        link = self._customer(service, external_id)
        values = link._api_delete()
        return {"customer": lago.customer(values)}

    def customer_current_usage(self, service, external_id):
        link = self._customer(service, external_id)
        subscription = self._active_subscription_of(service, link)
        usage = subscription._fc_usage_values(apply_taxes=self._query().get("apply_taxes", "true") != "false")
        return {"customer_usage": lago.customer_usage(usage)}

    def customer_past_usage(self, service, external_id):
        link = self._customer(service, external_id)
        subscription = self._active_subscription_of(service, link, include_terminated=True)
        query = self._query()
        page, per_page = lago.parse_pagination(query.to_dict(flat=False))
        periods = subscription._fc_past_usage_values(
            metric_code=query.get("billable_metric_code"),
            periods_count=lago.parse_int_param(query.get("periods_count"), "periods_count"))
        chunk = periods[(page - 1) * per_page: page * per_page]
        return {"usage_periods": [lago.usage_period(p) for p in chunk],
                "meta": lago.meta(page, per_page, len(periods))}

    def customer_invoices(self, service, external_id):
        self._customer(service, external_id)
        return self._invoice_page(service, external_customer_id=external_id)

    def _active_subscription_of(self, service, link, include_terminated=False):
        external_id = self._query().get("external_subscription_id")
        if not external_id:
            raise lago.validation({"external_subscription_id": ["value_is_mandatory"]})
        subscription = request.env["sale.order"]._api_find(
            service, external_id, statuses=None if include_terminated else ("active",))
        if not subscription or subscription.x_fc_account_link_id != link:
            raise lago.method_not_allowed("no_active_subscription")
        return subscription

    # ------------------------------------------------------------------ subscriptions
    def subscription_create(self, service):
        clean = lago.validate_subscription_create(self._body("subscription"))
        subscription = request.env["sale.order"]._api_create_subscription(service, clean)
        return {"subscription": lago.subscription(subscription._api_values(with_plan=True))}

    def subscription_list(self, service):
        query = self._query()
        statuses = query.getlist("status[]") or query.getlist("status") or ["active"]
        domain = request.env["sale.order"]._api_domain(service, statuses=statuses)
        if query.get("external_customer_id"):
            domain.append(("x_fc_account_link_id.external_id", "=", query["external_customer_id"]))
        if query.get("plan_code"):
            domain.append(("plan_id.x_fc_plan_code", "=", query["plan_code"]))
        return self._page(request.env["sale.order"], domain,
                          lambda sub: lago.subscription(sub._api_values()), "subscriptions", order="id")

    def subscription_find(self, service, external_id):
        status = self._query().get("status") or "active"
        subscription = request.env["sale.order"]._api_find(service, external_id, statuses=(status,))
        if not subscription:
            raise lago.not_found("subscription")
        return {"subscription": lago.subscription(subscription._api_values(with_plan=True))}

    def subscription_terminate(self, service, external_id):
        query = self._query()
        status = query.get("status") or "active"
        subscription = request.env["sale.order"]._api_find(service, external_id, statuses=(status,))
        if not subscription:
            raise lago.not_found("subscription")
        subscription._api_terminate(on_termination_invoice=query.get("on_termination_invoice") or "generate")
        return {"subscription": lago.subscription(subscription._api_values(with_plan=True))}

    # ------------------------------------------------------------------ events
    def event_create(self, service):
        clean = lago.validate_event(self._body("event"), now=_now())
        try:
            [event] = request.env["fusion.billing.event"]._ingest(service, [clean])
        except IngestConflict:
            raise IngestConflict(None) from None
        except errors.Invalid as error:  # keyed by batch index: one event is keyed by field
            raise errors.Invalid(error.details.get("0", error.details)) from None
        return {"event": lago.event(event)}

    def event_batch(self, service):
        cleaned = lago.validate_batch(self._json(), now=_now())
        return lago.events(request.env["fusion.billing.event"]._ingest(service, cleaned))

    def event_list(self, service):
        query = self._query()
        domain = [("service_id", "=", service.id)]
        for field in ("external_subscription_id", "code"):
            if query.get(field):
                domain.append((field, "=", query[field]))
        if query.get("status"):  # our extension: status=unbillable lists events that bill nothing
            domain.append(("state", "!=", "processed") if query["status"] == "unbillable" else ("state", "=", query["status"]))
        for bound, operator in (("timestamp_from", ">="), ("timestamp_to", "<=")):
            if query.get(bound):
                domain.append(("timestamp", operator, lago.parse_datetime_param(query[bound], bound)))
        return self._page(request.env["fusion.billing.event"], domain,
                          lambda e: lago.event(e._api_values()), "events", order="timestamp desc, id desc")

    def event_find(self, service, transaction_id):
        event = request.env["fusion.billing.event"].search(
            [("service_id", "=", service.id), ("transaction_id", "=", transaction_id)],
            order="id desc", limit=1)
        if not event:
            raise lago.not_found("event")
        return {"event": lago.event(event._api_values())}

    # ------------------------------------------------------------------ catalog (read-only)
    def plan_list(self, service):
        return self._page(request.env["sale.subscription.plan"], self._plan_domain(service),
                          lambda plan: lago.plan(plan._api_values()), "plans", order="id")

    def plan_find(self, service, code):
        plan = request.env["sale.subscription.plan"].search(self._plan_domain(service) + [("x_fc_plan_code", "=", code)], limit=1)
        if not plan:
            raise lago.not_found("plan")
        return {"plan": lago.plan(plan._api_values())}

    def _plan_domain(self, service):
        return [("x_fc_service_id", "=", service.id), ("x_fc_plan_code", "!=", False)]

    def metric_list(self, service):
        return self._page(request.env["fusion.billing.metric"], [("service_id", "=", service.id)],
                          lambda metric: lago.billable_metric(metric._api_values()), "billable_metrics", order="id")

    def metric_find(self, service, code):
        metric = request.env["fusion.billing.metric"].search(
            [("service_id", "=", service.id), ("code", "=", code)], limit=1)
        if not metric:
            raise lago.not_found("billable_metric")
        return {"billable_metric": lago.billable_metric(metric._api_values())}

    # ------------------------------------------------------------------ invoices
    def invoice_list(self, service):
        return self._invoice_page(service, external_customer_id=self._query().get("external_customer_id"))

    def _invoice_page(self, service, external_customer_id=None):
        move_model = request.env["account.move"]
        domain = move_model._api_domain(service, external_customer_id, **lago.invoice_filters(self._query()))
        return self._page(move_model, domain, lambda move: lago.invoice(move._api_values()), "invoices",
                          order="invoice_date desc, id desc")

    def _invoice(self, service, lago_id):
        record_id = lago.parse_record_id(lago_id)  # ASCII digits within an id's range ("²" is not 2)
        move = request.env["account.move"]._api_find(service, record_id) if record_id else None
        if not move:
            raise lago.not_found("invoice")
        return move

    def invoice_find(self, service, lago_id):
        return {"invoice": lago.invoice(self._invoice(service, lago_id)._api_values(detailed=True))}

    def invoice_download(self, service, lago_id):
        move = self._invoice(service, lago_id)
        if move.state != "posted":
            raise lago.not_found("invoice")
        move._api_render_pdf()
        return {"invoice": lago.invoice(move._api_values(detailed=True))}


    # ------------------------------------------------------------------ dual run (extension)
    def reconciliation_report(self, service):
        """Amounts the app billed that Odoo cannot derive (e.g. usage Stripe charged)."""
        bills = lago.validate_app_bills(self._json())
        count = request.env["fusion.billing.reconciliation"]._api_report(service, bills)
        return {"app_bills": {"received": count}}


def _read_at_most(stream, limit):
    """Up to ``limit`` bytes of ``stream`` (a read may return less than asked: loop)."""
    chunks, size = [], 0
    while size < limit:
        chunk = stream.read(min(64 * 1024, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def json_response(body, status=200, headers=()):
    return request.make_response(lago.dumps(body), headers=[("Content-Type", "application/json"), *headers],
                                 status=status)


def is_api_request():
    return bool(request) and request.httprequest.path.startswith(PREFIXES)


def error_response(exception):
    """The answer to an API request that failed outside the handler (``ir.http._handle_error``):
    conflicts Odoo's replays could not resolve are a 503 with ``Retry-After`` (nothing was stored;
    events are idempotent by transaction id), anything else keeps its status, always as a Lago
    envelope, never Odoo's HTML page."""
    if isinstance(exception, LagoResponse):
        return exception
    if isinstance(exception, RequestEntityTooLarge):  # the route's max_content_length, before the handler
        error = lago.payload_too_large()
        return json_response(error.body, error.status)
    if _is_conflict(exception):
        exception.loglevel = logging.WARNING  # expected under load; Odoo logged every replay already
        error = lago.retry_later()
        return json_response(error.body, error.status, [("Retry-After", str(lago.RETRY_AFTER_SECONDS))])
    if isinstance(exception, HTTPException) and exception.code:
        return json_response({"status": exception.code, "error": exception.name}, exception.code)
    error = lago.internal_error()
    return json_response(error.body, error.status)


def _is_conflict(exception):
    cause = exception.__cause__ if isinstance(exception, ValidationError) else exception
    if isinstance(cause, ConcurrencyError):
        return True
    if isinstance(cause, (OperationalError, IntegrityError)):
        return cause.pgcode in RETRYABLE_PGCODES or cause.pgcode == errorcodes.UNIQUE_VIOLATION
    return False


_TIMEZONES = []


def _timezones():
    """The time zone names Odoo can store on a partner (``res.partner.tz``)."""
    if not _TIMEZONES:
        _TIMEZONES.append(frozenset(request.env["res.partner"]._fields["tz"].get_values(request.env)))
    return _TIMEZONES[0]


def conflict_details(conflict):
    """422 details for a transaction id reused with another payload (single event or batch index)."""
    return {"transaction_id": ["value_already_exist"]} if conflict.index is None else \
        {str(conflict.index): {"transaction_id": ["value_already_exist"]}}


def _now():
    return datetime.now(timezone.utc)
