-- Tests of mod_keystore_tokens.lua's decisions against a scripted keystore on a real Unix socket
-- (answers dribbled 3 bytes at a time), on Prosody's own net.server loop and util.sasl, with
-- Prosody's session and mod_saslauth reduced to what the module touches. What the end-to-end
-- tests cannot provoke on a real keystore (503 not_ready, 403, 400, a failed refresh issuance,
-- provision tokens, foreign hosts) is covered here. Run: lua5.4 keystore_tokens_test.lua (exit 0
-- = passed); ProsodyIntegrationTests runs it under `swift test`.

local h = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua");
local json, check, step = h.json, h.check, h.step;

local st = require "util.stanza";
local async = require "util.async";
local base64 = require "util.encodings".base64;
local sasl = require "util.sasl";

local host = "example.org";
local xmlns_sasl = "urn:ietf:params:xml:ns:xmpp-sasl";
local xmlns_token_auth = "erlang-solutions.com:xmpp:token-auth:0";

-- Prosody's accounts: what the module asks of core.usermanager.
local accounts = { alice = true };
package.loaded["core.usermanager"] = {
	user_exists = function (username, user_host) return user_host == host and accounts[username] == true; end;
	get_sasl_handler = function (realm) return sasl.new(realm, { plain_test = function () end }); end;
};

local socket_path = h.socket_path();
local peer = h.scripted_peer(socket_path);
local requests = peer.requests;
local respond; -- respond(request) -> HTTP answer text, or nil to close without one
function peer.script(request, send, close)
	local answer = respond(request);
	if answer then send(answer); end
	close();
end

local module = h.new_module(host, {
	keystore_socket = socket_path;
	keystore_timeout = 0.5;
	keystore_tokens_access_validity = 600;
});
h.load(h.directory .. "/mod_keystore_tokens.lua", module);
local keystore = module:require("keystore_client");

--- mod_saslauth's part of <auth/>, after the module's hook (priority 10) let the element through:
--- select the mechanism, process the decoded initial response, answer, and on success mark the
--- session authenticated and fire authentication-success.
module:hook("stanza/" .. xmlns_sasl .. ":auth", function (event)
	local session, stanza = event.origin, event.stanza;
	local handler = session.sasl_handler or package.loaded["core.usermanager"].get_sasl_handler(host, session);
	session.sasl_handler = handler;
	if not handler:select(stanza.attr.mechanism) then
		session.send(st.stanza("failure", { xmlns = xmlns_sasl }):tag("invalid-mechanism"));
		return true;
	end
	local text = stanza[1];
	if text then
		text = base64.decode(text);
		if not text then
			session.sasl_handler = nil;
			session.send(st.stanza("failure", { xmlns = xmlns_sasl }):tag("incorrect-encoding"));
			return true;
		end
	end
	local status, ret, err_text = handler:process(text);
	local reply = st.stanza(status, { xmlns = xmlns_sasl });
	if status == "failure" then
		reply:tag(ret):up();
		if err_text then reply:text_tag("text", err_text); end
		module:fire("authentication-failure", { session = session });
		session.sasl_handler = handler:clean_clone();
	elseif status == "success" then
		if ret then reply:text(base64.encode(ret)); end
		session.type, session.username = "c2s", handler.username;
		module:fire("authentication-success", { session = session });
	end
	session.send(reply);
	return true;
end, 0);

local function new_session(secure)
	local session = { type = "c2s_unauthed", secure = secure ~= false, sent = {} };
	function session.send(stanza) session.sent[#session.sent + 1] = stanza; end
	function session.log(level, fmt, ...) module:log(level, fmt, ...); end
	return session;
end

--- Offers the stream features to a new session as mod_saslauth and the module do.
local function features_for(session)
	session.sasl_handler = package.loaded["core.usermanager"].get_sasl_handler(host, session);
	local features = st.stanza("stream:features")
		:tag("mechanisms", { xmlns = xmlns_sasl }):text_tag("mechanism", "PLAIN"):up();
	module:fire("stream-features", { origin = session, features = features });
	local offered = {};
	for mechanism in features:get_child("mechanisms", xmlns_sasl):childtags("mechanism") do
		offered[#offered + 1] = mechanism:get_text();
	end
	return table.concat(offered, " ");
end

--- Sends <auth mechanism='X-OAUTH'>base64</auth> in the session's runner (as mod_c2s does) and
--- calls back with the answer element.
local function authenticate(session, token_text, callback)
	local stanza = st.stanza("auth", { xmlns = xmlns_sasl, mechanism = "X-OAUTH" });
	if token_text then stanza:text(token_text); end
	local before = #session.sent;
	async.runner(function ()
		module:fire("stanza/" .. xmlns_sasl .. ":auth", { origin = session, stanza = stanza });
		callback(session.sent[before + 1], session);
	end):run(true);
end

local function condition_of(answer)
	if not answer or answer.name ~= "failure" then return nil; end
	for child in answer:childtags() do
		if child.name ~= "text" then return child.name; end
	end
end

local function verify_answer(body) return h.json_answer(200, body); end
local access_bytes = "access\0alice@example.org\00063900000000\0" .. ("ab"):rep(48);
local refresh_bytes = "refresh\0alice@example.org\00063900000000\0003\0" .. ("cd"):rep(48);
local fresh_access_bytes = "access\0alice@example.org\00063900000600\0" .. ("ef"):rep(48);

--- A keystore that verifies every token with `verdict` and issues `issued[type]`.
local function keystore_answering(verdict, issued)
	return function (request)
		if request.path == "/v1/domains/example.org/tokens/verify" then
			return verify_answer(verdict);
		elseif request.path == "/v1/domains/example.org/tokens" then
			local body = json.decode(request.body);
			return h.json_answer(200, { token = base64.encode(issued[body.type]), expires = "2025-01-01T00:00:00Z", version = "v1",
				sequence = body.type == "refresh" and 3 or nil });
		end
		return h.json_answer(404, { error = "not_found", message = "no route " .. request.path });
	end;
end

step("X-OAUTH is offered next to the other mechanisms on encrypted streams only, and composes with EXTERNAL", function (done)
	check(module.features[1] == xmlns_token_auth, "disco feature " .. tostring(module.features[1]));
	local session = new_session();
	check(features_for(session) == "PLAIN X-OAUTH", "offered: " .. features_for(session));
	check(session.sasl_handler:mechanisms()["X-OAUTH"] and session.sasl_handler:mechanisms()["PLAIN"], "handler has both");
	check(features_for(new_session(false)) == "PLAIN", "not offered unencrypted");
	-- mod_keystore_certs adds EXTERNAL the same way, before or after: both stay.
	local both = new_session();
	features_for(both);
	local external = function () return "alice", true; end;
	local with_external = keystore.sasl_handler_with(both, both.sasl_handler, "EXTERNAL", { external = external });
	check(with_external:mechanisms()["X-OAUTH"] and with_external:mechanisms()["EXTERNAL"], "EXTERNAL added after X-OAUTH keeps it");
	local other = new_session();
	other.sasl_handler = keystore.sasl_handler_with(other, package.loaded["core.usermanager"].get_sasl_handler(host, other),
		"EXTERNAL", { external = external });
	module:fire("stream-features", { origin = other, features = st.stanza("stream:features") });
	check(other.sasl_handler:mechanisms()["X-OAUTH"] and other.sasl_handler:mechanisms()["EXTERNAL"]
		and other.sasl_handler.profile.external == external, "X-OAUTH added after EXTERNAL keeps it and its profile function");
	check(keystore.sasl_handler_with(other, other.sasl_handler, "EXTERNAL", { external = external }) == other.sasl_handler,
		"extending again with the same mechanism returns the handler as is");
	done();
end);

step("an access token logs in; the keystore gets the token in base64", function (done)
	respond = keystore_answering({ valid = true, type = "access", jid = "alice@example.org", expires = "2025-01-01T00:00:00Z" }, {});
	local session = new_session();
	features_for(session);
	local first = #requests + 1;
	authenticate(session, base64.encode(access_bytes), function (answer)
		check(answer and answer.name == "success" and answer:get_text() == "", "success without data: " .. tostring(answer));
		check(session.username == "alice" and session.keystore_token == "access", "logged in as alice with an access token");
		check(#requests == first and requests[first].path == "/v1/domains/example.org/tokens/verify", "one verify request");
		check(json.decode(requests[first].body).token == base64.encode(access_bytes), "the token sent to the keystore");
		done();
	end);
end);

step("a refresh token logs in and the success carries a fresh access token issued for the account", function (done)
	respond = keystore_answering({ valid = true, type = "refresh", jid = "alice@example.org", sequence = 3 },
		{ access = fresh_access_bytes });
	local session = new_session();
	features_for(session);
	local first = #requests + 1;
	authenticate(session, base64.encode(refresh_bytes), function (answer)
		check(answer and answer.name == "success", "success: " .. tostring(answer));
		check(answer and base64.decode(answer:get_text()) == fresh_access_bytes, "success data is the fresh access token");
		check(session.username == "alice" and session.keystore_token == "refresh", "logged in with a refresh token");
		local issue = requests[first + 1];
		check(issue and issue.path == "/v1/domains/example.org/tokens", "then an issue request");
		local body = issue and json.decode(issue.body) or {};
		check(body.type == "access" and body.jid == "alice@example.org" and body.valid_for_s == 600,
			"issued: access for the bare JID with keystore_tokens_access_validity: " .. (issue and issue.body or ""));
		done();
	end);
end);

--- Runs `cases` ({ respond, token, condition, text? }) one after the other.
local function run_cases(cases, done)
	local i = 0;
	local function next_case()
		i = i + 1;
		local case = cases[i];
		if not case then return done(); end
		respond = case.respond;
		local session = new_session();
		features_for(session);
		authenticate(session, case.token or base64.encode(access_bytes), function (answer)
			check(condition_of(answer) == case.condition, case.name .. ": " .. tostring(answer));
			if case.text then
				check(answer and answer:get_child_text("text") == case.text, case.name .. " text: " .. tostring(answer));
			end
			check(session.type == "c2s_unauthed" and session.username == nil, case.name .. ": not logged in");
			next_case();
		end);
	end
	next_case();
end

step("revoked, expired, bad MAC, unreadable, foreign, provision and unknown-account tokens are not-authorized", function (done)
	run_cases({
		{ name = "revoked", respond = keystore_answering({ valid = false, reason = "revoked" }), condition = "not-authorized", text = "Token revoked" },
		{ name = "expired", respond = keystore_answering({ valid = false, reason = "expired" }), condition = "not-authorized", text = "Token expired" },
		{ name = "bad MAC", respond = keystore_answering({ valid = false, reason = "mac" }), condition = "not-authorized", text = "Invalid token" },
		{ name = "malformed", respond = keystore_answering({ valid = false, reason = "malformed" }), condition = "not-authorized" },
		{ name = "400", respond = function () return h.json_answer(400, { error = "bad_request", message = "token is not base64" }); end,
			condition = "not-authorized" },
		{ name = "other host", respond = keystore_answering({ valid = true, type = "access", jid = "alice@example.net" }), condition = "not-authorized" },
		{ name = "provision", respond = keystore_answering({ valid = true, type = "provision", jid = "alice@example.org" }), condition = "not-authorized" },
		{ name = "no such account", respond = keystore_answering({ valid = true, type = "access", jid = "mallory@example.org" }), condition = "not-authorized" },
		{ name = "empty initial response", respond = keystore_answering({ valid = true, type = "access", jid = "alice@example.org" }),
			token = "=", condition = "malformed-request" },
		{ name = "not base64", respond = keystore_answering({ valid = true, type = "access", jid = "alice@example.org" }),
			token = "***", condition = "incorrect-encoding" },
	}, done);
end);

step("keystore unreachable, not ready, refusing Prosody or failing to issue: temporary-auth-failure (fail closed)", function (done)
	local requests_before = #requests;
	run_cases({
		{ name = "503 not_ready", respond = function () return h.json_answer(503, { error = "not_ready", message = "catching up" }); end,
			condition = "temporary-auth-failure" },
		{ name = "403 (ACL)", respond = function () return h.json_answer(403, { error = "forbidden", message = "no tokens:verify" }); end,
			condition = "temporary-auth-failure" },
		{ name = "no answer", respond = function () return nil; end, condition = "temporary-auth-failure" },
		{ name = "refresh accepted, issuing refused", respond = function (request)
			if request.path:match("/verify$") then
				return verify_answer({ valid = true, type = "refresh", jid = "alice@example.org", sequence = 1 });
			end
			return h.json_answer(503, { error = "not_ready", message = "catching up" });
		end, token = base64.encode(refresh_bytes), condition = "temporary-auth-failure" },
	}, function ()
		check(#requests - requests_before == 5, "each case asked the keystore: " .. (#requests - requests_before));
		done();
	end);
end);

step("unreachable socket: temporary-auth-failure", function (done)
	local lost = h.new_module(host, { keystore_socket = socket_path .. ".missing" });
	h.load(h.directory .. "/mod_keystore_tokens.lua", lost);
	local session = new_session();
	session.sasl_handler = package.loaded["core.usermanager"].get_sasl_handler(host, session);
	lost:fire("stream-features", { origin = session, features = st.stanza("stream:features") });
	local stanza = st.stanza("auth", { xmlns = xmlns_sasl, mechanism = "X-OAUTH" }):text(base64.encode(access_bytes));
	async.runner(function ()
		lost:fire("stanza/" .. xmlns_sasl .. ":auth", { origin = session, stanza = stanza });
		check(condition_of(session.sent[1]) == "temporary-auth-failure", "unreachable: " .. tostring(session.sent[1]));
		done();
	end):run(true);
end);

--- Sends the token IQ from a logged-in session and calls back with the answer.
local function request_tokens(session, callback)
	local iq = st.iq({ type = "get", id = "t1" }):tag("query", { xmlns = xmlns_token_auth }):up();
	local before = #session.sent;
	async.runner(function ()
		local handled = module:fire("iq-get/self/" .. xmlns_token_auth .. ":query", { origin = session, stanza = iq });
		check(handled == true, "the IQ is handled");
		callback(session.sent[before + 1]);
	end):run(true);
end

local function logged_in(secure)
	local session = new_session(secure);
	session.type, session.username = "c2s", "alice";
	return session;
end

step("the token IQ answers <items> with base64 access_token and refresh_token issued by the keystore", function (done)
	respond = keystore_answering({}, { access = access_bytes, refresh = refresh_bytes });
	local first = #requests + 1;
	request_tokens(logged_in(), function (answer)
		local items = answer and answer.attr.type == "result" and answer:get_child("items", xmlns_token_auth);
		check(items, "result with items: " .. tostring(answer));
		check(items and base64.decode(items:get_child_text("access_token")) == access_bytes, "access_token");
		check(items and base64.decode(items:get_child_text("refresh_token")) == refresh_bytes, "refresh_token");
		local kinds = {};
		for i = first, #requests do
			local body = json.decode(requests[i].body);
			check(requests[i].path == "/v1/domains/example.org/tokens" and body.jid == "alice@example.org", "issue request " .. requests[i].body);
			kinds[body.type] = body;
		end
		check(kinds.access and kinds.access.valid_for_s == 600, "access validity from the settings");
		check(kinds.refresh and kinds.refresh.valid_for_s == nil, "refresh validity left to the keystore");
		done();
	end);
end);

step("the token IQ fails closed: wait/service-unavailable when the keystore is not ready; never unencrypted", function (done)
	respond = function () return h.json_answer(503, { error = "not_ready", message = "catching up" }); end;
	request_tokens(logged_in(), function (answer)
		local error_type, condition;
		if answer then error_type, condition = answer:get_error(); end
		check(error_type == "wait" and condition == "service-unavailable", "503: " .. tostring(answer));
		local before = #requests;
		request_tokens(logged_in(false), function (refused)
			local refused_type, refused_condition;
			if refused then refused_type, refused_condition = refused:get_error(); end
			check(refused_type == "auth" and refused_condition == "forbidden", "unencrypted: " .. tostring(refused));
			check(#requests == before, "no token issued for an unencrypted stream");
			done();
		end);
	end);
end);

step("deleting an account revokes its refresh tokens, retried until the keystore confirms", function (done)
	local attempts = 0;
	respond = function (request)
		attempts = attempts + 1;
		check(request.line == "POST /v1/domains/example.org/users/alice/tokens/revoke HTTP/1.1", "revoke request: " .. request.line);
		if attempts == 1 then return h.json_answer(503, { error = "not_ready", message = "catching up" }); end
		return h.json_answer(200, { user = "alice@example.org", sequence = 4 });
	end;
	module:fire("user-deleted", { username = "alice", host = host }, true);
	module:fire("user-deleted", { username = "bob", host = "elsewhere.example" }, true);
	local store = module.stores.keystore_pending_token_revocations;
	check(store and store._ and store._.alice, "recorded before being sent");
	local function wait()
		if attempts >= 2 and next(store._) == nil then
			check(attempts == 2, "sent twice (503, then 200): " .. attempts);
			return done();
		end
		h.timer.add_task(0.05, wait);
	end
	wait();
end);

step("a password change revokes the refresh tokens too", function (done)
	local revoked;
	respond = function (request)
		revoked = request.path;
		return h.json_answer(200, { user = "alice@example.org", sequence = 5 });
	end;
	module:fire("user-password-changed", { username = "alice", host = host }, true);
	local function wait()
		if revoked then
			check(revoked == "/v1/domains/example.org/users/alice/tokens/revoke", "revoked: " .. revoked);
			return done();
		end
		h.timer.add_task(0.02, wait);
	end
	wait();
end);

h.run("mod_keystore_tokens.lua", function () os.remove(socket_path); end);
