"""OpenAPI 3 description of the Lago-compatible API, served at ``<prefix>/openapi.json``.

Kept next to the router so the two change together; tier 2 checks every route is described.
The input bounds come from ``core.lago.LIMITS`` / ``core.money``, the table validation uses.
"""
from ..core import lago, money

NULLABLE_STRING = {"type": "string", "nullable": True}
DATETIME = {"type": "string", "format": "date-time", "nullable": True}
CENTS = {"type": "integer"}
ID = {"type": "string", "minLength": 1, "maxLength": lago.MAX_ID_LENGTH}
MAX_MAGNITUDE = 10 ** money.MAX_INTEGER_DIGITS
NUMBER = {"type": "number", "exclusiveMinimum": True, "minimum": -MAX_MAGNITUDE,
          "exclusiveMaximum": True, "maximum": MAX_MAGNITUDE}
DATE_INPUT = {"type": "string", "format": "date-time", "nullable": True,
              "description": f"from {lago.DATE_MIN.isoformat()} to before {lago.DATE_MAX.isoformat()}"}
BOUNDS = (f"Numbers (JSON numbers, and numeric strings read as numbers): |x| < 1e{money.MAX_INTEGER_DIGITS}, at most "
          f"{money.MAX_FRACTION_DIGITS} decimal places, literals of at most {money.MAX_NUMBER_TEXT} characters. "
          f"Bodies: at most {lago.MAX_BODY_BYTES} bytes, nesting depth {lago.MAX_DEPTH}, no NUL or lone surrogate "
          f"in any string or key. Dates from {lago.DATE_MIN.date()} to before {lago.DATE_MAX.date()}. Ids at most "
          f"{lago.MAX_ID_LENGTH} characters, query values {lago.MAX_QUERY_LENGTH}. Beyond a bound: 422 "
          "validation_errors naming the field (value_is_out_of_range, too_deep, value_is_invalid, invalid_date).")


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties, required=()):
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": True}


def _error(status, description, with_code=True, with_details=False):
    properties = {"status": {"type": "integer", "enum": [status]}, "error": {"type": "string"}}
    required = ["status", "error"]
    if with_code:
        properties["code"] = {"type": "string"}
        required.append("code")
    if with_details:
        properties["error_details"] = {"type": "object"}
        required.append("error_details")
    return {"description": description, "content": {"application/json": {"schema": _object(properties, required)}}}


ERRORS = {
    "400": _error(400, "Malformed JSON or missing root object", with_code=False),
    "401": _error(401, "Missing, unknown or revoked API key", with_code=False),
    "404": _error(404, "Resource not found (or owned by another service)"),
    "405": _error(405, "Method not allowed, or no active subscription"),
    "413": _error(413, "Request body too large"),
    "422": _error(422, "Validation errors: error_details {field: [code]} (input bounds: info.x-limits)",
                  with_details=True),
    "503": _error(503, "A conflict with concurrent requests outlasted Odoo's replays. Retry after the "
                       "Retry-After header's seconds: events are idempotent by transaction_id, customers and "
                       "subscriptions by external_id, so a retry never counts twice."),
}

SCHEMAS = {
    "Meta": _object({
        "current_page": {"type": "integer"}, "next_page": {"type": "integer", "nullable": True},
        "prev_page": {"type": "integer", "nullable": True}, "total_pages": {"type": "integer"},
        "total_count": {"type": "integer"},
    }, ["current_page", "next_page", "prev_page", "total_pages", "total_count"]),
    "Customer": _object({
        "lago_id": {"type": "string"}, "external_id": {"type": "string"}, "name": NULLABLE_STRING,
        "email": NULLABLE_STRING, "currency": NULLABLE_STRING, "timezone": NULLABLE_STRING,
        "applicable_timezone": {"type": "string"}, "created_at": DATETIME, "updated_at": DATETIME,
    }, ["lago_id", "external_id", "applicable_timezone", "created_at", "updated_at"]),
    "CustomerInput": _object({
        "external_id": ID, "name": NULLABLE_STRING, "email": NULLABLE_STRING,
        "currency": NULLABLE_STRING, "country": NULLABLE_STRING,
        "timezone": {"type": "string", "nullable": True, "description": "An IANA time zone name Odoo knows"},
        "customer_type": {"type": "string", "enum": ["company", "individual"], "nullable": True},
        "net_payment_term": {"type": "integer", "minimum": 0, "maximum": lago.MAX_INTEGER, "nullable": True},
    }, ["external_id"]),
    "Plan": _object({
        "lago_id": {"type": "string"}, "name": {"type": "string"}, "code": {"type": "string"},
        "interval": {"type": "string"}, "amount_cents": CENTS, "amount_currency": {"type": "string"},
        "charges": {"type": "array", "items": {"type": "object"}},
    }, ["lago_id", "name", "code", "interval", "amount_cents", "amount_currency"]),
    "Subscription": _object({
        "lago_id": {"type": "string"}, "external_id": {"type": "string"},
        "external_customer_id": {"type": "string"}, "plan_code": {"type": "string"},
        "status": {"type": "string", "enum": ["active", "pending", "terminated", "canceled"]},
        "started_at": DATETIME, "terminated_at": DATETIME,
        "current_billing_period_started_at": DATETIME, "current_billing_period_ending_at": DATETIME,
    }, ["lago_id", "external_id", "external_customer_id", "plan_code", "status"]),
    "SubscriptionInput": _object({
        "external_customer_id": ID, "plan_code": ID, "external_id": ID, "name": NULLABLE_STRING,
        "subscription_at": DATE_INPUT, "ending_at": DATE_INPUT,
        "billing_time": {"type": "string", "enum": ["calendar", "anniversary"], "nullable": True},
    }, ["external_customer_id", "plan_code", "external_id"]),
    "Event": _object({
        "lago_id": {"type": "string"}, "transaction_id": {"type": "string"}, "code": {"type": "string"},
        "external_subscription_id": {"type": "string"}, "timestamp": DATETIME,
        "properties": {"type": "object"}, "created_at": DATETIME,
        "status": {"type": "string", "description": "Extension: processed, unknown_subscription, "
                                                     "unknown_metric, invalid_property or late"},
    }, ["lago_id", "transaction_id", "code", "external_subscription_id", "timestamp"]),
    "EventInput": _object({
        "transaction_id": ID, "external_subscription_id": ID, "code": ID,
        "timestamp": {"oneOf": [{"type": "integer", "minimum": 0, "exclusiveMaximum": True,
                                 "maximum": int(lago.DATE_MAX.timestamp())},
                                {"type": "number", "minimum": 0, "exclusiveMaximum": True,
                                 "maximum": int(lago.DATE_MAX.timestamp())},
                                {"type": "string", "pattern": r"^\d{1,12}(\.\d{1,9})?$"}],
                      "nullable": True, "description": f"Unix seconds before {lago.DATE_MAX.date()}; default now"},
        "properties": {"type": "object", "nullable": True,
                       "description": "Numbers (and a metric's numeric strings) within info.x-limits.number; "
                                      f"nesting within depth {lago.MAX_DEPTH} of the body"},
        "precise_total_amount_cents": {"oneOf": [{"type": "string"}, NUMBER], "nullable": True},
    }, ["transaction_id", "external_subscription_id", "code"]),
    "BillableMetric": _object({
        "lago_id": {"type": "string"}, "name": {"type": "string"}, "code": {"type": "string"},
        "aggregation_type": {"type": "string"}, "field_name": NULLABLE_STRING,
    }, ["lago_id", "name", "code", "aggregation_type"]),
    "Invoice": _object({
        "lago_id": {"type": "string"}, "number": {"type": "string"}, "status": {"type": "string"},
        "payment_status": {"type": "string"}, "currency": {"type": "string"},
        "total_amount_cents": CENTS, "taxes_amount_cents": CENTS, "fees_amount_cents": CENTS,
        "file_url": NULLABLE_STRING,
    }, ["lago_id", "status", "payment_status", "currency", "total_amount_cents"]),
    "CustomerUsage": _object({
        "from_datetime": DATETIME, "to_datetime": DATETIME, "currency": {"type": "string"},
        "amount_cents": CENTS, "taxes_amount_cents": CENTS, "total_amount_cents": CENTS,
        "charges_usage": {"type": "array", "items": {"type": "object"}},
    }, ["from_datetime", "to_datetime", "currency", "amount_cents", "charges_usage"]),
    "AppBill": _object({
        "external_subscription_id": ID,
        "period_start": {"type": "string", "format": "date"}, "period_end": {"type": "string", "format": "date"},
        "external_customer_id": NULLABLE_STRING, "currency": NULLABLE_STRING, "plan_code": NULLABLE_STRING,
        "base_fee_cents": {"type": "integer", "nullable": True, "minimum": -lago.MAX_CENTS, "maximum": lago.MAX_CENTS},
        "tax_cents": {"type": "integer", "nullable": True, "minimum": -lago.MAX_CENTS, "maximum": lago.MAX_CENTS},
        "usage": {"type": "object", "additionalProperties": {"type": "integer", "minimum": -lago.MAX_CENTS,
                                                              "maximum": lago.MAX_CENTS}},
    }, ["external_subscription_id", "period_start", "period_end"]),
    "AppBillsReceived": _object({"received": {"type": "integer"}}, ["received"]),
}

PAGE_PARAMETERS = [
    {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": lago.MAX_PAGE}},
    {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": lago.MAX_PER_PAGE},
     "description": "A larger value is served as the maximum"},
]


def _path_param(name):
    return {"name": name, "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]+$", "maxLength": lago.MAX_ID_LENGTH}}


def _query_param(name, required=False):
    return {"name": name, "in": "query", "required": required,
            "schema": {"type": "string", "maxLength": lago.MAX_QUERY_LENGTH}}


def _single(root, schema):
    return {"description": "OK", "content": {"application/json": {"schema": _object({root: _ref(schema)}, [root])}}}


def _list(root, schema):
    return {"description": "OK", "content": {"application/json": {"schema": _object(
        {root: {"type": "array", "items": _ref(schema)}, "meta": _ref("Meta")}, [root, "meta"])}}}


def _body(root, schema):
    return {"required": True, "content": {"application/json": {"schema": _object({root: _ref(schema)}, [root])}}}


def _op(summary, ok, errors=("401",), parameters=(), body=None):
    errors = tuple(errors) + (("503",) if errors else ())  # every authenticated call may meet a conflict
    operation = {"summary": summary, "responses": dict({"200": ok}, **{code: ERRORS[code] for code in errors}),
                 "parameters": list(parameters), "security": [{"bearer": []}]}
    if body:
        operation["requestBody"] = body
        operation["responses"].update({code: ERRORS[code] for code in ("400", "413", "422")})
    return operation


def document(base_path):
    """The OpenAPI document, with ``base_path`` as server URL (both prefixes serve it)."""
    ext = _path_param("external_id")
    paths = {
        "/health": {"get": dict(_op("Service health (public)", {"description": "OK", "content": {"application/json": {
            "schema": _object({"status": {"type": "string"}, "version": {"type": "string"}}, ["status", "version"])}}},
            errors=()), security=[])},
        "/customers": {
            "post": _op("Create or update a customer (upsert by external_id)", _single("customer", "Customer"),
                        body=_body("customer", "CustomerInput")),
            "get": _op("List customers", _list("customers", "Customer"), errors=("401", "422"),
                       parameters=PAGE_PARAMETERS + [_query_param("external_id"), _query_param("search_term")]),
        },
        "/customers/{external_id}": {
            "get": _op("Find a customer", _single("customer", "Customer"), ("401", "404"), [ext]),
            "delete": _op("Delete a customer (soft; terminates its subscriptions)", _single("customer", "Customer"),
                          ("401", "404"), [ext]),
        },
        "/customers/{external_id}/current_usage": {"get": _op(
            "Usage of the open period, rated", _single("customer_usage", "CustomerUsage"), ("401", "404", "405", "422"),
            [ext, _query_param("external_subscription_id", True), _query_param("apply_taxes")])},
        "/customers/{external_id}/past_usage": {"get": _op(
            "Usage of closed periods", {"description": "OK", "content": {"application/json": {"schema": _object(
                {"usage_periods": {"type": "array", "items": _ref("CustomerUsage")}, "meta": _ref("Meta")},
                ["usage_periods", "meta"])}}}, ("401", "404", "405", "422"),
            [ext, _query_param("external_subscription_id", True), _query_param("billable_metric_code"),
             {"name": "periods_count", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                 "maximum": lago.MAX_PAGE}}] + PAGE_PARAMETERS)},
        "/customers/{external_id}/invoices": {"get": _op(
            "A customer's invoices", _list("invoices", "Invoice"), ("401", "404", "422"), [ext] + PAGE_PARAMETERS)},
        "/subscriptions": {
            "post": _op("Create a subscription (idempotent on external_id; another plan switches plans)",
                        _single("subscription", "Subscription"), ("401", "404"),
                        body=_body("subscription", "SubscriptionInput")),
            "get": _op("List subscriptions (active by default)", _list("subscriptions", "Subscription"),
                       ("401", "422"), PAGE_PARAMETERS + [_query_param("external_customer_id"), _query_param("plan_code"),
                                                          _query_param("status[]")]),
        },
        "/subscriptions/{external_id}": {
            "get": _op("Find a subscription", _single("subscription", "Subscription"), ("401", "404", "422"),
                       [ext, _query_param("status")]),
            "delete": _op("Terminate a subscription (or cancel a pending one)", _single("subscription", "Subscription"),
                          ("401", "404", "422"), [ext, _query_param("status"), _query_param("on_termination_invoice")]),
        },
        "/events": {
            "post": _op("Send a usage event (replay of an identical event answers 200)", _single("event", "Event"),
                        body=_body("event", "EventInput")),
            "get": _op("List events; status=unbillable lists events that bill nothing", _list("events", "Event"),
                       ("401", "422"), PAGE_PARAMETERS + [_query_param("external_subscription_id"), _query_param("code"),
                                                          _query_param("status")]),
        },
        "/events/batch": {"post": _op(
            "Send up to 100 events, all or nothing", {"description": "OK", "content": {"application/json": {
                "schema": _object({"events": {"type": "array", "items": _ref("Event")}}, ["events"])}}},
            body={"required": True, "content": {"application/json": {"schema": _object(
                {"events": {"type": "array", "items": _ref("EventInput"), "maxItems": 100}}, ["events"])}}})},
        "/events/{transaction_id}": {"get": _op(
            "Find an event by transaction id", _single("event", "Event"), ("401", "404"),
            [_path_param("transaction_id")])},
        "/plans": {"get": _op("List catalog plans (read-only)", _list("plans", "Plan"), ("401", "422"), PAGE_PARAMETERS)},
        "/plans/{code}": {"get": _op("Find a plan", _single("plan", "Plan"), ("401", "404"), [_path_param("code")])},
        "/billable_metrics": {"get": _op("List billable metrics (read-only)", _list("billable_metrics", "BillableMetric"),
                                         ("401", "422"), PAGE_PARAMETERS)},
        "/billable_metrics/{code}": {"get": _op("Find a billable metric", _single("billable_metric", "BillableMetric"),
                                                ("401", "404"), [_path_param("code")])},
        "/invoices": {"get": _op("List invoices", _list("invoices", "Invoice"), ("401", "422"),
                                 PAGE_PARAMETERS + [_query_param("external_customer_id"), _query_param("status"),
                                                    _query_param("payment_status"), _query_param("issuing_date_from"),
                                                    _query_param("issuing_date_to")])},
        "/invoices/{lago_id}": {"get": _op("Find an invoice", _single("invoice", "Invoice"), ("401", "404"),
                                           [_path_param("lago_id")])},
        "/openapi.json": {"get": dict(_op("This document (public)", {"description": "OK", "content": {
            "application/json": {"schema": {"type": "object"}}}}, errors=()), security=[])},
        "/reconciliation/app_bills": {"post": _op(
            "Dual run: amounts the app billed that Odoo cannot derive (minor units), per subscription and period",
            _single("app_bills", "AppBillsReceived"), body={"required": True, "content": {"application/json": {
                "schema": _object({"app_bills": {"type": "array", "minItems": 1, "maxItems": lago.MAX_APP_BILLS,
                                                 "items": _ref("AppBill")}}, ["app_bills"])}}})},
        "/invoices/{lago_id}/download": {"post": _op(
            "Render the invoice PDF; answers the invoice with file_url", _single("invoice", "Invoice"), ("401", "404"),
            [_path_param("lago_id")])},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "Fusion Centralized Billing — Lago-compatible API", "version": "1.0.0",
                 "description": "Drop-in for the Lago clients: change only the base URL and API key. " + BOUNDS,
                 "x-limits": lago.LIMITS},
        "servers": [{"url": base_path}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": SCHEMAS},
        "paths": paths,
    }
