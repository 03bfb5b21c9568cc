"""What ``make run`` prints before the server starts: how to call the demo. With a command after
it (``python -m serve_app.usage serve run configs/demo.yaml``) it then runs that command, with
``LORASERVE_ADMIN_TOKEN`` set: the caller's own, or a random one generated and printed once.
"""

import os
import secrets
import sys

from serve_app import env

URL = "http://127.0.0.1:8000"


def main() -> None:
    env.apply_ray_defaults()
    token = "$LORASERVE_ADMIN_TOKEN"
    if not env.admin_token():
        generated = secrets.token_urlsafe(24)
        os.environ[env.PREFIX + "ADMIN_TOKEN"] = generated
        print(
            f"admin token for this run (generated; set LORASERVE_ADMIN_TOKEN to choose): "
            f"{generated}"
        )
        token = generated
    print(
        f"""
loraserve demo: starting on {URL} (first start takes a minute: engines load)

  curl {URL}/v1/models
  open {URL}/playground     (chat, base vs adapter side by side, image mixes)
  curl {URL}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "smollm2", "messages": [{{"role": "user", "content": \\
"What is the capital of France?"}}], "max_tokens": 32, "temperature": 0}}'
  curl -N {URL}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "smollm2:pirate", "messages": [{{"role": "user", "content": \\
"Why do we need sleep?"}}], "stream": true, "max_tokens": 48}}'
  curl {URL}/v1/images/generations -H 'Content-Type: application/json' \\
       -d '{{"model": "tiny-sd:style3d", "prompt": "a red fox", "seed": 1}}' \\
       | python3 -c "import sys, json, base64; \\
sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)['data'][0]['b64_json']))" > fox.png
  curl {URL}/v1/adapters -H 'Authorization: Bearer {token}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{URL}/v1', api_key='x'); \\
print(c.chat.completions.create(model='smollm2:french', max_tokens=48, \\
messages=[{{'role': 'user', 'content': 'How do bees make honey?'}}]).choices[0].message.content)"
""",
        flush=True,
    )
    if sys.argv[1:]:
        os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
