"""The GraphQL schema of CopilotKit's legacy runtime (``generateCopilotResponse``), as SDL.

It covers what ``@copilotkit/runtime-client-gql`` (CopilotKit ≤ 1.10 and the GraphQL
client still published with later versions) sends and selects, so graphql-core can
parse and validate every operation before anything runs. ``@defer`` and ``@stream``
are enabled because the client asks for ``messages @stream`` and ``content @stream``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from graphql import (
    GraphQLDeferDirective,
    GraphQLError,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLStreamDirective,
    build_schema,
    specified_directives,
)

SDL = """
scalar DateTimeISO
scalar JSON
scalar JSONObject

enum MessageRole { user assistant system tool developer }
enum CopilotRequestType { Chat Task TextareaCompletion TextareaPopover Suggestion }
enum ActionInputAvailability { disabled enabled remote }
enum MessageStatusCode { Pending Success Failed }
enum ResponseStatusCode { Pending Success Failed }
enum FailedResponseStatusReason {
  GUARDRAILS_VALIDATION_FAILED
  MESSAGE_STREAM_INTERRUPTED
  UNKNOWN_ERROR
}
enum MetaEventName { LangGraphInterruptEvent CopilotKitLangGraphInterruptEvent }

input TextMessageInput { content: String! role: MessageRole! parentMessageId: String }
input ActionExecutionMessageInput {
  name: String!
  arguments: String!
  parentMessageId: String
  scope: String
}
input ResultMessageInput {
  actionExecutionId: String!
  actionName: String!
  result: String!
  parentMessageId: String
}
input AgentStateMessageInput {
  threadId: String!
  agentName: String!
  role: MessageRole!
  state: String!
  running: Boolean!
  nodeName: String!
  runId: String!
  active: Boolean!
}
input ImageMessageInput {
  format: String!
  bytes: String!
  role: MessageRole!
  parentMessageId: String
}
input MessageInput {
  id: String!
  createdAt: DateTimeISO!
  textMessage: TextMessageInput
  actionExecutionMessage: ActionExecutionMessageInput
  resultMessage: ResultMessageInput
  agentStateMessage: AgentStateMessageInput
  imageMessage: ImageMessageInput
}
input ActionInput {
  name: String!
  description: String!
  jsonSchema: String!
  available: ActionInputAvailability
}
input FrontendInput { toDeprecate_fullContext: String actions: [ActionInput!]! url: String }
input CopilotContextInput { description: String! value: String! }
input GenerateCopilotResponseMetadataInput { requestType: CopilotRequestType }
input AgentSessionInput { agentName: String! threadId: String nodeName: String }
input AgentStateInput { agentName: String! state: String! config: String }
input ForwardedParametersInput {
  model: String
  maxTokens: Float
  stop: [String!]
  toolChoice: String
  toolChoiceFunctionName: String
  temperature: Float
}
input GuardrailsRuleInput { allowList: [String!] denyList: [String!] }
input GuardrailsInput { inputValidationRules: GuardrailsRuleInput! }
input CloudInput { guardrails: GuardrailsInput }
input OpenAIApiAssistantAPIInput { runId: String threadId: String }
input ExtensionsInput { openaiAssistantAPI: OpenAIApiAssistantAPIInput }
input MetaEventInput {
  name: MetaEventName!
  value: String!
  response: String
  messages: [MessageInput!]
}
input GenerateCopilotResponseInput {
  metadata: GenerateCopilotResponseMetadataInput!
  threadId: String
  runId: String
  messages: [MessageInput!]!
  frontend: FrontendInput!
  cloud: CloudInput
  forwardedParameters: ForwardedParametersInput
  agentSession: AgentSessionInput
  agentState: AgentStateInput
  agentStates: [AgentStateInput!]
  extensions: ExtensionsInput
  metaEvents: [MetaEventInput!]
  context: [CopilotContextInput!]
}
input LoadAgentStateInput { threadId: String! agentName: String! }

type PendingMessageStatus { code: MessageStatusCode! }
type SuccessMessageStatus { code: MessageStatusCode! }
type FailedMessageStatus { code: MessageStatusCode! reason: String! }
union MessageStatus = PendingMessageStatus | SuccessMessageStatus | FailedMessageStatus

interface BaseResponseStatus { code: ResponseStatusCode! }
type PendingResponseStatus implements BaseResponseStatus { code: ResponseStatusCode! }
type SuccessResponseStatus implements BaseResponseStatus { code: ResponseStatusCode! }
type FailedResponseStatus implements BaseResponseStatus {
  code: ResponseStatusCode!
  reason: FailedResponseStatusReason!
  details: JSON
}
union ResponseStatus = PendingResponseStatus | SuccessResponseStatus | FailedResponseStatus

interface BaseMessageOutput { id: String! createdAt: DateTimeISO! status: MessageStatus! }
type TextMessageOutput implements BaseMessageOutput {
  id: String!
  createdAt: DateTimeISO!
  status: MessageStatus!
  role: MessageRole!
  content: [String!]!
  parentMessageId: String
}
type ActionExecutionMessageOutput implements BaseMessageOutput {
  id: String!
  createdAt: DateTimeISO!
  status: MessageStatus!
  name: String!
  scope: String
  arguments: [String!]!
  parentMessageId: String
}
type ResultMessageOutput implements BaseMessageOutput {
  id: String!
  createdAt: DateTimeISO!
  status: MessageStatus!
  actionExecutionId: String!
  actionName: String!
  result: String!
}
type AgentStateMessageOutput implements BaseMessageOutput {
  id: String!
  createdAt: DateTimeISO!
  status: MessageStatus!
  threadId: String!
  agentName: String!
  nodeName: String!
  runId: String!
  active: Boolean!
  role: MessageRole!
  state: String!
  running: Boolean!
}
type ImageMessageOutput implements BaseMessageOutput {
  id: String!
  createdAt: DateTimeISO!
  status: MessageStatus!
  format: String!
  bytes: String!
  role: MessageRole!
  parentMessageId: String
}

interface BaseMetaEvent { type: String! name: MetaEventName! }
type LangGraphInterruptEvent implements BaseMetaEvent {
  type: String!
  name: MetaEventName!
  value: String!
  response: String
}
type CopilotKitLangGraphInterruptEventData { value: String! messages: [BaseMessageOutput!]! }
type CopilotKitLangGraphInterruptEvent implements BaseMetaEvent {
  type: String!
  name: MetaEventName!
  data: CopilotKitLangGraphInterruptEventData!
  response: String
}

type OpenAIApiAssistantAPIResponse { runId: String threadId: String }
type ExtensionsResponse { openaiAssistantAPI: OpenAIApiAssistantAPIResponse }
type CopilotResponse {
  threadId: String!
  status: ResponseStatus!
  runId: String
  messages: [BaseMessageOutput!]!
  extensions: ExtensionsResponse
  metaEvents: [BaseMetaEvent!]
}
type Agent { name: String! id: String! description: String! }
type AgentsResponse { agents: [Agent!]! }
type LoadAgentStateResponse {
  threadId: String!
  threadExists: Boolean!
  state: String!
  messages: String!
}

type Query {
  hello: String!
  availableAgents: AgentsResponse!
  loadAgentState(data: LoadAgentStateInput!): LoadAgentStateResponse!
}
type Mutation {
  generateCopilotResponse(
    data: GenerateCopilotResponseInput!
    properties: JSONObject
  ): CopilotResponse!
}
"""


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GraphQLError("JSONObject must be an object.")
    return value


def _date_time(value: Any) -> str:
    if not isinstance(value, str):
        raise GraphQLError("DateTimeISO must be an ISO 8601 string.")
    return value


@cache
def get_schema() -> GraphQLSchema:
    """The schema, with ``@defer``/``@stream`` enabled (built once per process)."""
    built = build_schema(SDL)
    json_object = built.type_map["JSONObject"]
    date_time = built.type_map["DateTimeISO"]
    assert isinstance(json_object, GraphQLScalarType) and isinstance(date_time, GraphQLScalarType)
    # Literals are coerced through coerce_input_value too (graphql-core's default).
    json_object.coerce_input_value = _json_object
    date_time.coerce_input_value = _date_time
    return GraphQLSchema(
        query=built.query_type,
        mutation=built.mutation_type,
        types=list(built.type_map.values()),
        directives=[*specified_directives, GraphQLDeferDirective, GraphQLStreamDirective],
    )
