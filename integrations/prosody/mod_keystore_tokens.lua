-- MongooseIM-compatible token authentication for Prosody, backed by a keystore cluster.
--
-- The token IQ (erlang-solutions.com:xmpp:token-auth:0) hands a logged-in user an access and a
-- refresh token; SASL X-OAUTH logs in with either (a refresh token also yields a fresh access
-- token in the <success/> data), exactly as MongooseIM's mod_auth_token and cyrsasl_oauth do, so
-- MongooseIM clients work unchanged. The keystore issues and verifies the tokens: the signing key
-- never leaves its locked memory, every version still in its grace period verifies (a rotation
-- logs nobody out), and a refresh-token revocation on any node holds on every node.
--
-- Settings (per host or global):
--   keystore_socket = "/run/keystore/node1.sock"     -- required
--   keystore_timeout = 5                              -- seconds per request
--   keystore_tokens_access_validity = 3600            -- seconds; unset: the keystore's default (1 h)
--   keystore_tokens_refresh_validity = 2160000        -- seconds; unset: the keystore's default (25 days)
--   keystore_tokens_revoke_on_password_change = true  -- a password change revokes the refresh tokens
--   disable_sasl_mechanisms = { "X-OAUTH" }           -- (Prosody's own option) turns X-OAUTH off
--
-- Fails closed: when the keystore is unreachable or not ready, X-OAUTH answers
-- temporary-auth-failure and the token IQ wait/service-unavailable.

local st = require "util.stanza";
local async = require "util.async";
local base64 = require "util.encodings".base64;
local jid_prepped_split = require "util.jid".prepped_split;
local promise = require "util.promise";
local register_mechanism = require "util.sasl".registerMechanism;
local usermanager = require "core.usermanager";

local keystore = module:require("keystore_client");
local in_runner, await = keystore.in_runner, keystore.await;

local xmlns_token_auth = "erlang-solutions.com:xmpp:token-auth:0";
local xmlns_sasl = "urn:ietf:params:xml:ns:xmpp-sasl";
local mechanism_name = "X-OAUTH";
local host = module.host;

local client = keystore.configured("mod_keystore_tokens");
local validity = {
	access = module:get_option_number("keystore_tokens_access_validity"),
	refresh = module:get_option_number("keystore_tokens_refresh_validity"),
};
for kind, seconds in pairs(validity) do
	if seconds <= 0 or seconds % 1 ~= 0 then
		error(("keystore_tokens_%s_validity must be a whole number of seconds above 0, not %s"):format(kind, tostring(seconds)));
	end
end
local revoke_on_password_change = module:get_option_boolean("keystore_tokens_revoke_on_password_change", true);
local disabled_mechanisms = module:get_option_set("disable_sasl_mechanisms", { "DIGEST-MD5" });

-- A refresh token is about 3.3 KB at most (a 3071-byte JID); anything much longer is not a
-- token and is not worth a round trip to the keystore.
local max_token_bytes = 16 * 1024;

module:add_feature(xmlns_token_auth);

local tokens_path = keystore.path("v1", "domains", host, "tokens");
local verify_path = keystore.path("v1", "domains", host, "tokens", "verify");

--- Asks the keystore for a token of `kind` for a local user. Returns a promise of the token's
--- bytes (not base64).
local function issue(kind, username)
	return client:post(tokens_path, { type = kind, jid = username .. "@" .. host, valid_for_s = validity[kind] })
		:next(function (result)
			local token = type(result.json.token) == "string" and base64.decode(result.json.token) or nil;
			if not token or token == "" then
				return promise.reject({ kind = "protocol", text = "the keystore issued no readable " .. kind .. " token" });
			end
			return token;
		end);
end

------------------------------------------------------------------------------------------------
-- The token IQ (MongooseIM's mod_auth_token:process_iq): an authenticated session asks for a
-- fresh access and refresh token pair.

local function handle_token_request(event)
	local origin, stanza = event.origin, event.stanza;
	if origin.type ~= "c2s" or not origin.username then
		origin.send(st.error_reply(stanza, "cancel", "service-unavailable"));
		return true;
	end
	if not origin.secure then
		-- A token is a bearer credential: it never travels over an unencrypted stream.
		origin.send(st.error_reply(stanza, "auth", "forbidden", "Tokens are only handed out over an encrypted stream"));
		return true;
	end
	local username = origin.username;
	in_runner(function ()
		local ok, tokens = await(promise.all({ issue("access", username), issue("refresh", username) }));
		if not ok then
			local etype, condition, text = keystore.stanza_error(tokens);
			origin.log("warn", "Cannot issue tokens: %s", keystore.describe_failure(tokens));
			origin.send(st.error_reply(stanza, etype, condition, text));
			return;
		end
		origin.log("info", "Issued an access and a refresh token");
		origin.send(st.reply(stanza)
			:tag("items", { xmlns = xmlns_token_auth })
				:text_tag("access_token", base64.encode(tokens[1]))
				:text_tag("refresh_token", base64.encode(tokens[2])));
	end);
	return true;
end

for _, target in ipairs({ "self", "host" }) do
	module:hook("iq-get/" .. target .. "/" .. xmlns_token_auth .. ":query", handle_token_request);
end

------------------------------------------------------------------------------------------------
-- SASL X-OAUTH (MongooseIM's cyrsasl_oauth): the initial response is the token.
--
-- Our <auth/> hook asks the keystore before mod_saslauth processes the element (the wait pauses
-- only this session's runner) and leaves its verdict on the session; mod_saslauth then runs the
-- exchange as for any mechanism, and the mechanism below reports the verdict.

--- util.sasl's registry is shared by every host, so the mechanism itself only dispatches to the
--- function the session's handler profile carries (see with_x_oauth).
register_mechanism(mechanism_name, {}, function (sasl, message)
	local verdict_for = sasl.profile.keystore_x_oauth;
	if not verdict_for then return "failure", "invalid-mechanism"; end
	return verdict_for(sasl, message);
end);

local function with_x_oauth(session, handler)
	return keystore.sasl_handler_with(session, handler, mechanism_name, {
		keystore_x_oauth = function (sasl, message)
			local verdict = session.keystore_token_verdict;
			session.keystore_token_verdict = nil;
			if not message or message == "" then
				return "failure", "malformed-request", "X-OAUTH needs the token as its initial response";
			end
			if not verdict or verdict.token ~= message then
				return "failure", "not-authorized";
			end
			if not verdict.username then
				return "failure", "not-authorized", verdict.text;
			end
			sasl.username = verdict.username;
			session.keystore_pending_token = verdict.kind;
			-- A refresh token's success carries a fresh access token (base64-encoded by mod_saslauth).
			return "success", verdict.access_token;
		end;
	});
end

module:hook("stream-features", function (event)
	local session, features = event.origin, event.features;
	if session.type ~= "c2s_unauthed" or not session.secure or not session.sasl_handler then return; end
	if disabled_mechanisms:contains(mechanism_name) then return; end
	keystore.offer_sasl_mechanism(session, features, mechanism_name, with_x_oauth);
end, -10); -- after mod_saslauth built the handler and the mechanism list

local sasl_failure = keystore.sasl_failure;

--- What the client is told for each reason the keystore gives (MongooseIM says not-authorized
--- to all of them; the text helps a client decide to fall back to its password).
local rejection_texts = {
	malformed = "Invalid token";
	mac = "Invalid token";
	expired = "Token expired";
	revoked = "Token revoked";
};

--- The keystore could not give a verdict: fail closed, without telling the client its token is
--- bad (it may well be good: temporary-auth-failure makes it retry later).
local function keystore_unavailable(session, failure, what)
	local level = keystore.is_unavailable(failure) and "warn" or "error";
	session.log(level, "X-OAUTH refused, cannot %s: %s", what, keystore.describe_failure(failure));
	return sasl_failure(session, "temporary-auth-failure", "The token service is unavailable; retry shortly");
end

module:hook("stanza/" .. xmlns_sasl .. ":auth", function (event)
	local session, stanza = event.origin, event.stanza;
	if session.type ~= "c2s_unauthed" or stanza.attr.mechanism ~= mechanism_name then return; end
	-- Unencrypted or disabled: our handler is not installed and mod_saslauth refuses the mechanism.
	if not session.secure or disabled_mechanisms:contains(mechanism_name) then return; end

	keystore.prepare_sasl_handler(session, with_x_oauth);
	session.keystore_token_verdict = nil;

	local text = stanza[1];
	local token = text and base64.decode(text);
	if not token or token == "" then return; end -- mod_saslauth: incorrect-encoding, or our malformed-request
	if #token > max_token_bytes then
		session.keystore_token_verdict = { token = token, text = "Invalid token" };
		return;
	end
	if not async.ready() then
		return sasl_failure(session, "temporary-auth-failure", "Token check unavailable");
	end

	local ok, result = await(client:post(verify_path, { token = base64.encode(token) }));
	if session.destroyed or session.type ~= "c2s_unauthed" then return true; end
	if not ok then
		if result.kind == "http" and (result.status == 400 or result.status == 422) then
			-- The keystore could not read it as a token at all.
			session.log("info", "X-OAUTH refused: %s", keystore.describe_failure(result));
			session.keystore_token_verdict = { token = token, text = "Invalid token" };
			return;
		end
		return keystore_unavailable(session, result, "verify the token");
	end

	local answer = result.json;
	if answer.valid ~= true then
		local reason = tostring(answer.reason);
		session.log("info", "X-OAUTH refused by the keystore: %s", reason);
		session.keystore_token_verdict = { token = token, text = rejection_texts[reason] or "Invalid token" };
		return;
	end

	local username, jid_host;
	if type(answer.jid) == "string" then
		username, jid_host = jid_prepped_split(answer.jid);
	end
	local kind = answer.type;
	if not username or jid_host ~= host then
		session.log("warn", "Keystore accepted a token for %s, which is not an account on %s", tostring(answer.jid), host);
		session.keystore_token_verdict = { token = token, text = "Invalid token" };
		return;
	end
	if kind ~= "access" and kind ~= "refresh" then
		-- Provision tokens create or update an account's vCard in MongooseIM; this module does not
		-- store vCards, so it does not log in with them either.
		session.log("info", "X-OAUTH refused: %s tokens do not log in here", tostring(kind));
		session.keystore_token_verdict = { token = token, text = "This kind of token does not log in" };
		return;
	end
	if not usermanager.user_exists(username, host) then
		session.log("info", "X-OAUTH refused: the token's account %s@%s does not exist", username, host);
		session.keystore_token_verdict = { token = token, text = "Invalid token" };
		return;
	end

	local access_token;
	if kind == "refresh" then
		local issued, fresh = await(issue("access", username));
		if session.destroyed or session.type ~= "c2s_unauthed" then return true; end
		if not issued then
			return keystore_unavailable(session, fresh, "issue the access token a refresh login yields");
		end
		access_token = fresh;
	end
	session.keystore_token_verdict = { token = token, username = username, kind = kind, access_token = access_token };
	-- mod_saslauth continues: select, process (our keystore_x_oauth), success, reset.
end, 10);

module:hook("authentication-success", function (event)
	local session = event.session;
	local kind = session.keystore_pending_token;
	if not kind then return; end
	session.keystore_pending_token = nil;
	session.keystore_token = kind;
	session.log("info", "Logged in with %s %s token%s", kind == "access" and "an" or "a", kind,
		kind == "refresh" and " (a fresh access token was sent in <success/>)" or "");
end);

module:hook("authentication-failure", function (event)
	event.session.keystore_pending_token = nil;
	event.session.keystore_token_verdict = nil;
end);

------------------------------------------------------------------------------------------------
-- Revocation: deleting an account (else a new account with the same name would inherit its
-- refresh tokens) and, unless turned off, changing the password raise the user's refresh-token
-- floor in the keystore. Recorded in storage first and retried until the keystore confirms,
-- across outages and restarts. Access tokens cannot be revoked (MongooseIM's design): they
-- expire within keystore_tokens_access_validity.

local pending_revocations = keystore.pending_user_requests("keystore_pending_token_revocations",
	"revoke the refresh tokens of", function (username)
		local ok, result = await(client:post(keystore.path("v1", "domains", host, "users", username, "tokens", "revoke")));
		if not ok then return false, result; end
		module:log("info", "Revoked the refresh tokens of %s@%s (sequence floor now %s)", username, host, tostring(result.json.sequence));
		return true;
	end);

module:hook_global("user-deleted", function (event)
	if event.host ~= host then return; end
	pending_revocations.add(event.username);
end);

if revoke_on_password_change then
	module:hook_global("user-password-changed", function (event)
		if event.host ~= host then return; end
		pending_revocations.add(event.username);
	end);
end

-- Revocations recorded before a restart or an outage.
pending_revocations.flush();
