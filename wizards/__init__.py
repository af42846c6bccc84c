from . import fusion_billing_api_key_show
from . import fusion_billing_cutover_wizard
from . import fusion_billing_nexacloud_import
from . import sale_order_discount
