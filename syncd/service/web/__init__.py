"""The status page: server-rendered HTML, a little JavaScript and inline SVG charts, served by the
daemon's HTTP endpoint (:mod:`syncd.service.observe`) from the state store."""
