"""Tier 1 (Odoo-free) test configuration: make ``core`` importable as a top-level package."""
import os
import sys

ADDON_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ADDON_ROOT not in sys.path:
    sys.path.insert(0, ADDON_ROOT)
