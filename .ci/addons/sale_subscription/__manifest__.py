# TEST-ONLY STAND-IN for the Odoo Enterprise module of the same name (see ../README.md).
{
    "name": "Subscriptions (TEST-ONLY stand-in for Enterprise sale_subscription)",
    "version": "19.0.0.0.2",
    "summary": "CI stand-in exposing only the publicly documented sale_subscription surface and behaviour. "
               "Never deploy.",
    "depends": ["sale_management", "payment"],
    "data": [
        "security/ir.model.access.csv",
        "data/sale_subscription_data.xml",
        "views/sale_subscription_plan_views.xml",
    ],
    "author": "NexaSystems (CI stand-in)",
    "license": "LGPL-3",
    "installable": True,
}
