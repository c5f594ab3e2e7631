"""The local status page (docs/web.md): a small read-only HTTP(S) server on the agent's own asyncio loop.

Imported only when `[web] enabled` is true (agent/app.py imports `agent.web.server` lazily), so an agent without
the page never loads microdot or any of this. The modules, one job each:

  fmt       how a figure is shown to a person: units, the site's currency and which way money flows, local time
  svg       server-side SVG charts: the plan against price, one asset's schedule and SoC, an event's delivery
  delivery  an event's baseline vs delivered rows per M&V interval (live or from its report), for the chart
  snapshot  the agent's state as the page's JSON, built once per refresh whatever the number of viewers
  page      the HTML, CSS and JavaScript of the page
  server    routes, TLS, the login, start and stop
"""
