# TEST-ONLY STAND-IN for the Odoo Enterprise module of the same name (see ../README.md).
{
    "name": "Accounting (TEST-ONLY stand-in for Enterprise account_accountant)",
    "version": "19.0.0.0.1",
    "summary": "CI stand-in: declares the module name only. Never deploy.",
    "depends": ["account"],
    "author": "NexaSystems (CI stand-in)",
    "license": "LGPL-3",
    "installable": True,
}
