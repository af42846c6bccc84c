from . import test_foundation
from . import test_security
from . import test_api
from . import test_usage_billing
from . import test_webhooks
from . import test_nexacloud_import
from . import test_reconciliation
from . import test_openapi
