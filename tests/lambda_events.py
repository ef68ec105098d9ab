"""Minimal events of each kind Lambda delivers to this function (shapes as AWS documents them)."""

import base64
import json


def rest_v1(path, body, method="POST"):
    return {
        "resource": path,
        "path": path,
        "httpMethod": method,
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "requestContext": {"resourcePath": path, "httpMethod": method, "stage": "prod", "requestId": "r-1"},
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def http_v2(path, body, method="POST", domain="abc123.execute-api.us-east-1.amazonaws.com"):
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": domain},
        "requestContext": {
            "domainName": domain,
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.1"},
            "requestId": "r-2",
            "stage": "$default",
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def function_url(path, body, method="POST"):
    event = http_v2(path, body, method, domain="abcdefgh.lambda-url.us-east-1.on.aws")
    event["routeKey"] = "$default"
    return event


def alb(path, body, method="POST"):
    return {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/tg/1"}},
        "httpMethod": method,
        "path": path,
        "queryStringParameters": {},
        "headers": {"content-type": "application/json", "host": "lb.example.com"},
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "isBase64Encoded": True,
    }


HTTP_KINDS = {"rest_v1": rest_v1, "http_v2": http_v2, "function_url": function_url, "alb": alb}


def response_json(response: dict):
    body = response["body"]
    if response.get("isBase64Encoded"):
        body = base64.b64decode(body).decode()
    return json.loads(body)
