# Every benchmark runs this app with the settings `make run` uses (serve_app.env.RAY_DEFAULTS);
# servers started as subprocesses inherit them.
from serve_app import env as _env

_env.apply_ray_defaults(driver=True)
