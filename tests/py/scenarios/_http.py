"""Raw HTTP for the scenarios' bad-input checks, with the standard library only (the scenarios
run under several huggingface_hub versions, which bring different HTTP clients)."""
import json
import urllib.error
import urllib.request


class Reply:
    def __init__(self, status, headers, body):
        self.status_code = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.content = body

    @property
    def text(self):
        return self.content.decode(errors="replace")

    def json(self):
        return json.loads(self.content)


def request(method, url, headers=None, data=None, json_body=None):
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers = {**(headers or {}), "content-type": "application/json"}
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, dict(e.headers), e.read())


def get(url, headers=None):
    return request("GET", url, headers=headers)


def post(url, headers=None, data=None, json_body=None):
    return request("POST", url, headers=headers, data=data, json_body=json_body)
