import sys
from pathlib import Path

# the site kits of the other suites: sitekit (shipped config on free ports, running_site, eventually)
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
