"""Data queries, as :mod:`plantangenet.domain.query_plan` plans and shapes them
(an old import path).

Planning a query and shaping the compositor's answer are pure steps of the domain and
live in :mod:`plantangenet.domain.query_plan`, below the session actor that runs them; this
module keeps their names importable from here.
"""

from __future__ import annotations

from plantangenet.domain.query_plan import CHEM_ACTION as CHEM_ACTION
from plantangenet.domain.query_plan import QUERY_ACTION as QUERY_ACTION
from plantangenet.domain.query_plan import Disclosed as Disclosed
from plantangenet.domain.query_plan import Plan as Plan
from plantangenet.domain.query_plan import disclose as disclose
from plantangenet.domain.query_plan import encoded_size as encoded_size
from plantangenet.domain.query_plan import plan as plan
