from . import test_foundation
from . import test_security
from . import test_api
