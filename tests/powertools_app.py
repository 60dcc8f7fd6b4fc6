"""An unmodified aws-lambda-powertools HTTP API application, served by the gateway's unit tests
and by the e2e test on the cluster."""

WEB_APP = """
import base64, json
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.shared.cookies import Cookie

app = APIGatewayHttpResolver()

@app.get("/pets/<pet_id>")
def get_pet(pet_id):
    event = app.current_event
    return {
        "id": pet_id,
        "q": event.get_query_string_value("q"),
        "tags": event.get_query_string_value("tag"),
        "session": event.resolved_cookies_field.get("session"),
        "theme": event.resolved_cookies_field.get("theme"),
        "agent": event.get_header_value("user-agent"),
    }

@app.post("/pets")
def create_pet():
    pet = app.current_event.json_body
    return Response(
        status_code=201,
        content_type="application/json",
        body=json.dumps({"created": pet}),
        headers={"Location": "/pets/" + pet["name"]},
        cookies=[Cookie(name="last", value=pet["name"])],
    )

@app.post("/thumbnail")
def thumbnail():
    event = app.current_event
    data = base64.b64decode(event.body) if event.is_base64_encoded else event.body.encode()
    return Response(status_code=200, content_type="image/png", body=data[::-1])

def handler(event, context):
    return app.resolve(event, context)
"""

# The application's deployment package: powertools and its dependencies.
POWERTOOLS = ("aws_lambda_powertools", "jmespath", "typing_extensions")
