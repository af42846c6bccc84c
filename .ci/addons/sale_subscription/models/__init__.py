from . import product_template
from . import product_pricelist
from . import sale_subscription_plan
from . import sale_order_close_reason
from . import sale_order_line
from . import sale_order
