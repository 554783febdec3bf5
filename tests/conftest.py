import os
import sys

# Tests import the packages from the checkout, and keep torch to one thread so
# two pytest workers or a Ray trial do not oversubscribe the two CI cores.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_NUM_THREADS", "1")
