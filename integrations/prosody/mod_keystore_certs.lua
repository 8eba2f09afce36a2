-- XEP-0257 client certificates and SASL EXTERNAL for Prosody, backed by a keystore cluster.
--
-- The certificates live in keystored's replicated registry, not in Prosody's storage, so every
-- Prosody attached to any node of the cluster sees the same list, and a revocation made anywhere
-- closes the streams that logged in with that certificate everywhere (through /v1/events).
--
-- Settings (per host or global):
--   keystore_socket = "/run/keystore/node1.sock"   -- required
--   keystore_timeout = 5                            -- seconds per request
--   keystore_events_max_backoff = 5                 -- seconds between reconnection attempts, at most
--   c2s_ssl = { verify = { "peer", "client_once" } } -- so that clients can present a certificate
--
-- Fails closed: when the keystore is unreachable or not ready, EXTERNAL answers
-- temporary-auth-failure and the XEP-0257 IQs wait/service-unavailable.

local st = require "util.stanza";
local async = require "util.async";
local base64 = require "util.encodings".base64;
local jid_split = require "util.jid".split;
local sasl_new = require "util.sasl".new;
local usermanager = require "core.usermanager";
local set = require "util.set";

local keystore = module:require("keystore_client");

local xmlns_saslcert = "urn:xmpp:saslcert:1";
local xmlns_sasl = "urn:ietf:params:xml:ns:xmpp-sasl";
local host = module.host;

local socket_path = module:get_option_path("keystore_socket");
if not socket_path then
	error("mod_keystore_certs needs keystore_socket, the path of the local keystored socket (e.g. /run/keystore/node1.sock)");
end
local client = keystore.new(socket_path, { timeout = module:get_option_number("keystore_timeout", 5) });
local disabled_mechanisms = module:get_option_set("disable_sasl_mechanisms", { "DIGEST-MD5" });

module:add_feature(xmlns_saslcert);

------------------------------------------------------------------------------------------------
-- Helpers

--- Background work (re-checks, retries) always gets its own runner, so its waiting never holds
--- up whoever triggered it.
local function in_background(fn)
	async.runner(function (f) f(); end):run(fn);
end

--- Runs a stanza handler's work inside an async runner: directly when already in one (c2s
--- stanza handlers are, and waiting there pauses only that session), else in a fresh one.
local function in_runner(fn)
	if async.ready() then
		return fn();
	end
	in_background(fn);
end

--- Waits for a promise. Returns true, value or false, failure.
local function await(p)
	local value, failure = async.wait_for(p);
	if value ~= nil then return true, value; end
	return false, failure;
end

local function user_path(username, ...)
	return keystore.path("v1", "domains", host, "users", username, ...);
end

local function peer_certificate(session)
	local conn = session.conn;
	local sock = conn and conn.socket and conn:socket();
	if not (sock and sock.getpeercertificate) then return nil; end
	return sock:getpeercertificate();
end

local function certificate_fingerprint(cert)
	return (cert:digest("sha256"):gsub(":", ""):lower());
end

------------------------------------------------------------------------------------------------
-- Sessions that logged in with a certificate, by SHA-256 fingerprint. Shared so that a module
-- reload keeps knowing them; weak keys so a destroyed session never lingers.

local sessions_by_fingerprint = module:shared("sessions_by_fingerprint");

local function sessions_using(fingerprint)
	local sessions = sessions_by_fingerprint[fingerprint];
	if not sessions then
		sessions = setmetatable({}, { __mode = "k" });
		sessions_by_fingerprint[fingerprint] = sessions;
	end
	return sessions;
end

local function each_certificate_session()
	local result = {};
	for fingerprint, sessions in pairs(sessions_by_fingerprint) do
		local any = false;
		for session in pairs(sessions) do
			if session.destroyed or not session.keystore_cert then
				sessions[session] = nil;
			else
				result[#result + 1] = session;
				any = true;
			end
		end
		if not any then sessions_by_fingerprint[fingerprint] = nil; end
	end
	return result;
end

--- Certificates (user and fingerprint) revoked or disabled lately, from events and our own
--- requests: a SASL verdict the keystore gave just before a removal, but which reaches us after
--- its event, must not let the session in. A removed certificate never comes back for that user
--- (the registry refuses to register it again), so entries never go stale; the table is only
--- bounded.
local recently_removed, recently_removed_count = {}, 0;
local recently_removed_limit = 10000;

local function removal_key(bare_jid, fingerprint)
	return bare_jid .. " " .. fingerprint;
end

local function remember_removed(bare_jid, fingerprint)
	local key = removal_key(bare_jid, fingerprint);
	if not recently_removed[key] then
		recently_removed_count = recently_removed_count + 1;
		if recently_removed_count > recently_removed_limit then
			recently_removed, recently_removed_count = {}, 1;
		end
	end
	recently_removed[key] = os.time();
end

local function close_sessions(fingerprint, bare_jid, why)
	local sessions = sessions_by_fingerprint[fingerprint];
	if not sessions then return 0; end
	local closed = 0;
	for session in pairs(sessions) do
		local identity = session.keystore_cert;
		if session.destroyed or not identity or identity.fingerprint ~= fingerprint then
			sessions[session] = nil;
		elseif session.username .. "@" .. session.host == bare_jid then
			sessions[session] = nil;
			session.log("info", "Closing stream: its client certificate '%s' was %s", tostring(identity.name), why);
			session:close({ condition = "not-authorized", text = "Your client certificate was " .. why });
			closed = closed + 1;
		end
	end
	if next(sessions) == nil then sessions_by_fingerprint[fingerprint] = nil; end
	return closed;
end

------------------------------------------------------------------------------------------------
-- Re-check after a gap in the event stream: every certificate session asks certs/status.

local recheck = { needed = false, running = false, failures = 0 };
local recheck_batch = 1000;
local gone_states = set.new({ "revoked", "unknown" });

local function recheck_once()
	local sessions = each_certificate_session();
	for first = 1, #sessions, recheck_batch do
		local batch = {};
		for i = first, math.min(first + recheck_batch - 1, #sessions) do
			local session = sessions[i];
			batch[#batch + 1] = { user = session.username, fingerprint_sha256 = session.keystore_cert.fingerprint };
		end
		local ok, result = await(client:post(keystore.path("v1", "domains", host, "certs", "status"), { certs = batch }));
		if not ok then
			return false, result;
		end
		local answers = type(result.json.certs) == "table" and result.json.certs or {};
		for i, answer in ipairs(answers) do
			local session = sessions[first + i - 1];
			local state = type(answer) == "table" and answer.state or nil;
			if session and gone_states:contains(state)
					and answer.fingerprint_sha256 == session.keystore_cert.fingerprint then
				local bare_jid = session.username .. "@" .. host;
				remember_removed(bare_jid, session.keystore_cert.fingerprint);
				close_sessions(session.keystore_cert.fingerprint, bare_jid, state == "revoked" and "revoked" or "removed");
			end
		end
		if #answers ~= #batch then
			return false, { kind = "protocol", text = ("certs/status answered %d entries for %d"):format(#answers, #batch) };
		end
	end
	module:log("debug", "Re-checked %d certificate sessions", #sessions);
	return true;
end

local function recheck_all(reason)
	recheck.needed = true;
	if recheck.running then return; end
	recheck.running = true;
	module:log("debug", "Re-checking certificate sessions (%s)", reason);
	in_background(function ()
		while recheck.needed do
			recheck.needed = false;
			local ok, failure = recheck_once();
			if ok then
				recheck.failures = 0;
			else
				recheck.needed = true;
				recheck.failures = recheck.failures + 1;
				local delay = math.min(30, 0.25 * 2 ^ recheck.failures);
				module:log(recheck.failures == 1 and "warn" or "debug",
					"Cannot re-check certificate sessions (%s); retrying in %.1fs", keystore.describe_failure(failure), delay);
				async.sleep(delay);
			end
		end
		recheck.running = false;
	end);
end

------------------------------------------------------------------------------------------------
-- /v1/events: close streams whose certificate is revoked on any node.

local events = client:follow_events({
	on_event = function (event)
		if event.domain ~= host then return; end
		local fingerprint, user = event.fingerprint_sha256, event.user;
		if type(fingerprint) ~= "string" or type(user) ~= "string" then return; end
		if event.type == "cert_revoked" then
			remember_removed(user, fingerprint);
			local closed = close_sessions(fingerprint, user, "revoked");
			module:log("info", "Certificate '%s' of %s revoked (origin %s); closed %d stream(s)",
				tostring(event.name), tostring(event.user), tostring(event.origin), closed);
		elseif event.type == "cert_disabled" then
			-- A disabled certificate no longer logs in; streams already open keep going (XEP-0257).
			remember_removed(user, fingerprint);
		end
	end;
	on_gap = recheck_all;
}, { max_backoff = module:get_option_number("keystore_events_max_backoff", 5) });

function module.unload()
	events:stop();
end

------------------------------------------------------------------------------------------------
-- SASL EXTERNAL

--- The session's SASL handler, extended with an `external` profile function that reports the
--- verdict our <auth/> hook obtained from the keystore (util/sasl/external.lua calls it).
local function with_external(session, handler)
	if handler.profile.keystore_session == session then return handler; end
	local profile = {};
	for key, value in pairs(handler.profile) do profile[key] = value; end
	local mechanisms = {};
	for name in pairs(handler.mechs or {}) do mechanisms[name] = true; end
	mechanisms.EXTERNAL = true;
	profile.mechanisms = mechanisms;
	profile.keystore_session = session;
	function profile.external()
		local verdict = session.keystore_sasl_verdict;
		session.keystore_sasl_verdict = nil;
		if verdict and verdict.username then
			session.keystore_pending_identity = verdict.identity;
			return verdict.username, true;
		end
		return nil, nil; -- not-authorized
	end
	local extended = sasl_new(handler.realm, profile);
	extended.userdata = handler.userdata;
	return extended;
end

module:hook("stream-features", function (event)
	local session, features = event.origin, event.features;
	if session.type ~= "c2s_unauthed" or not session.secure or not session.sasl_handler then return; end
	if disabled_mechanisms:contains("EXTERNAL") or not peer_certificate(session) then return; end
	session.sasl_handler = with_external(session, session.sasl_handler);
	local mechanisms = features:get_child("mechanisms", xmlns_sasl);
	if not mechanisms then
		features:add_child(st.stanza("mechanisms", { xmlns = xmlns_sasl }):text_tag("mechanism", "EXTERNAL"));
		return;
	end
	for mechanism in mechanisms:childtags("mechanism") do
		if mechanism:get_text() == "EXTERNAL" then return; end
	end
	mechanisms:text_tag("mechanism", "EXTERNAL");
end, -10); -- after mod_saslauth built the handler and the mechanism list

local function sasl_failure(session, condition, text)
	module:fire_event("authentication-failure", { session = session, condition = condition, text = text });
	if session.sasl_handler then
		session.sasl_handler = session.sasl_handler:clean_clone();
	end
	local reply = st.stanza("failure", { xmlns = xmlns_sasl }):tag(condition):up();
	if text then reply:text_tag("text", text); end
	session.send(reply);
	return true;
end

--- Asks the keystore about the presented certificate before mod_saslauth processes <auth/>;
--- mod_saslauth then runs the exchange as for any mechanism (events, stream reset, bind).
module:hook("stanza/" .. xmlns_sasl .. ":auth", function (event)
	local session, stanza = event.origin, event.stanza;
	if session.type ~= "c2s_unauthed" or stanza.attr.mechanism ~= "EXTERNAL" then return; end
	if not session.secure or disabled_mechanisms:contains("EXTERNAL") then return; end
	local cert = peer_certificate(session);
	if not cert then return; end -- the handler has no EXTERNAL: mod_saslauth says invalid-mechanism

	local authzid = "";
	local text = stanza[1];
	if text and text ~= "=" then
		authzid = base64.decode(text);
		if not authzid then return; end -- mod_saslauth answers incorrect-encoding
	end

	local handler = session.sasl_handler;
	if not handler or handler.selected then
		handler = usermanager.get_sasl_handler(host, session);
	end
	session.sasl_handler = with_external(session, handler);
	session.keystore_sasl_verdict = nil;

	if not async.ready() then
		return sasl_failure(session, "temporary-auth-failure", "Certificate check unavailable");
	end
	local body = { certificate = cert:pem() };
	if authzid ~= "" then body.authzid = authzid; end
	local ok, result = await(client:post(keystore.path("v1", "domains", host, "sasl-external"), body));
	if session.destroyed or session.type ~= "c2s_unauthed" then return true; end

	if not ok then
		if keystore.is_unavailable(result) then
			session.log("warn", "SASL EXTERNAL refused, keystore unavailable: %s", keystore.describe_failure(result));
			return sasl_failure(session, "temporary-auth-failure", "The certificate store is unavailable; retry shortly");
		elseif result.status == 400 then
			return sasl_failure(session, "invalid-authzid", result.text);
		end
		session.log("info", "SASL EXTERNAL refused by the keystore: %s", keystore.describe_failure(result));
		return; -- the verdict stays empty: mod_saslauth answers not-authorized
	end

	local answer = result.json;
	local fingerprint = certificate_fingerprint(cert);
	local username, jid_host, resource;
	if type(answer.jid) == "string" then
		username, jid_host, resource = jid_split(answer.jid);
	end
	if not username or jid_host ~= host then
		session.log("warn", "Keystore accepted the certificate for %s, which is not an account on %s", tostring(answer.jid), host);
		return;
	end
	if answer.fingerprint_sha256 ~= nil and answer.fingerprint_sha256 ~= fingerprint then
		session.log("error", "Keystore verified another certificate than the one presented; refusing");
		return;
	end
	if recently_removed[removal_key(username .. "@" .. host, fingerprint)] then
		session.log("info", "Certificate of %s was revoked or disabled while it was being checked", answer.jid);
		return;
	end
	if not usermanager.user_exists(username, host) then
		session.log("info", "Certificate of %s is registered but the account does not exist", answer.jid);
		return;
	end
	session.keystore_sasl_verdict = {
		username = username;
		identity = {
			fingerprint = fingerprint;
			name = answer.name;
			resource = resource;
			-- Missing from the answer means unknown: do not let the session manage certificates.
			no_cert_management = answer.no_cert_management ~= false;
			not_after = answer.not_after;
		};
	};
	-- mod_saslauth continues: select, process (our profile.external), success, reset.
end, 10);

module:hook("authentication-success", function (event)
	local session = event.session;
	local identity = session.keystore_pending_identity;
	if not identity then return; end
	session.keystore_pending_identity = nil;
	session.keystore_cert = identity;
	sessions_using(identity.fingerprint)[session] = true;
	session.log("info", "Logged in with client certificate '%s'%s", tostring(identity.name),
		identity.no_cert_management and " (no certificate management)" or "");
end);

module:hook("authentication-failure", function (event)
	event.session.keystore_pending_identity = nil;
end);

-- A certificate naming a full JID authorizes that resource only (XEP-0257 section 3).
module:hook("pre-resource-bind", function (event)
	local identity = event.session.keystore_cert;
	if identity and identity.resource then
		if event.resource ~= identity.resource then
			event.session.log("debug", "Binding resource '%s' from the client certificate instead of '%s'",
				identity.resource, tostring(event.resource));
		end
		event.resource = identity.resource;
	end
end, -100);

------------------------------------------------------------------------------------------------
-- XEP-0257 IQs

local function reply_error(origin, stanza, failure)
	local etype, condition, text = keystore.stanza_error(failure);
	if failure.kind ~= "http" or failure.status == 403 or (failure.status or 0) >= 500 then
		origin.log("warn", "Keystore request failed: %s", keystore.describe_failure(failure));
	end
	origin.send(st.error_reply(stanza, etype, condition, text));
	return true;
end

--- XEP-0257 section 6: only a local user's own session, over an encrypted, authenticated stream.
local function check_stream(origin, stanza)
	if origin.type ~= "c2s" or not origin.username then
		origin.send(st.error_reply(stanza, "cancel", "service-unavailable"));
		return false;
	end
	if not origin.secure then
		origin.send(st.error_reply(stanza, "auth", "forbidden", "Certificate management needs an encrypted stream"));
		return false;
	end
	return true;
end

local function check_management(origin, stanza)
	local identity = origin.keystore_cert;
	if identity and identity.no_cert_management then
		origin.send(st.error_reply(stanza, "auth", "forbidden",
			"This session logged in with a certificate that may not manage certificates"));
		return false;
	end
	return true;
end

local function handle_items(event)
	local origin, stanza = event.origin, event.stanza;
	if not check_stream(origin, stanza) then return true; end
	in_runner(function ()
		local ok, result = await(client:get(user_path(origin.username, "certs")));
		if not ok then return reply_error(origin, stanza, result); end
		local reply = st.reply(stanza):tag("items", { xmlns = xmlns_saslcert });
		for _, entry in ipairs(type(result.json.certs) == "table" and result.json.certs or {}) do
			reply:tag("item"):text_tag("name", entry.name);
			if type(entry.certificate) == "string" then
				reply:text_tag("x509cert", entry.certificate);
			end
			-- Resources logged in with it here, and the one resource a full-JID certificate allows.
			local resources = set.new();
			for session in pairs(sessions_by_fingerprint[entry.fingerprint_sha256] or {}) do
				if not session.destroyed and session.resource then resources:add(session.resource); end
			end
			for _, jid in ipairs(type(entry.jids) == "table" and entry.jids or {}) do
				local node, _, resource = jid_split(jid);
				if node == origin.username and resource then resources:add(resource); end
			end
			if not resources:empty() then
				reply:tag("users");
				for resource in resources do reply:text_tag("resource", resource); end
				reply:up();
			end
			reply:up();
		end
		origin.send(reply);
	end);
	return true;
end

local function handle_append(event)
	local origin, stanza = event.origin, event.stanza;
	if not (check_stream(origin, stanza) and check_management(origin, stanza)) then return true; end
	local append = stanza.tags[1];
	local name = append:get_child_text("name");
	local x509cert = append:get_child_text("x509cert");
	x509cert = x509cert and x509cert:gsub("%s+", "");
	if not name or name == "" or not x509cert or x509cert == "" then
		origin.send(st.error_reply(stanza, "modify", "bad-request", "<append/> needs a <name/> and an <x509cert/>"));
		return true;
	end
	in_runner(function ()
		local ok, result = await(client:post(user_path(origin.username, "certs"), {
			name = name;
			certificate = x509cert;
			no_cert_management = append:get_child("no-cert-management") ~= nil;
		}));
		if not ok then return reply_error(origin, stanza, result); end
		origin.log("info", "Registered client certificate '%s'", name);
		origin.send(st.reply(stanza));
	end);
	return true;
end

local function handle_removal(event)
	local origin, stanza = event.origin, event.stanza;
	if not (check_stream(origin, stanza) and check_management(origin, stanza)) then return true; end
	local action = stanza.tags[1].name; -- "disable" or "revoke"
	local name = stanza.tags[1]:get_child_text("name");
	if not name or name == "" then
		origin.send(st.error_reply(stanza, "modify", "bad-request", "<" .. action .. "/> needs a <name/>"));
		return true;
	end
	in_runner(function ()
		local ok, result = await(client:post(user_path(origin.username, "certs", name, action)));
		if not ok then return reply_error(origin, stanza, result); end
		origin.log("info", "%s client certificate '%s'", action == "revoke" and "Revoked" or "Disabled", name);
		origin.send(st.reply(stanza));
		-- The event closes the streams on every Prosody; closing ours now saves the round trip.
		local entries = type(result.json.certs) == "table" and result.json.certs or { result.json };
		for _, entry in ipairs(entries) do
			if type(entry.fingerprint_sha256) == "string" then
				local bare_jid = origin.username .. "@" .. host;
				remember_removed(bare_jid, entry.fingerprint_sha256);
				if action == "revoke" then
					close_sessions(entry.fingerprint_sha256, bare_jid, "revoked");
				end
			end
		end
	end);
	return true;
end

for _, target in ipairs({ "self", "host" }) do
	module:hook("iq-get/" .. target .. "/" .. xmlns_saslcert .. ":items", handle_items);
	module:hook("iq-set/" .. target .. "/" .. xmlns_saslcert .. ":append", handle_append);
	module:hook("iq-set/" .. target .. "/" .. xmlns_saslcert .. ":disable", handle_removal);
	module:hook("iq-set/" .. target .. "/" .. xmlns_saslcert .. ":revoke", handle_removal);
end

------------------------------------------------------------------------------------------------
-- XEP-0257 section 6.2: no password change from a certificate session (XEP-0077).

local function password_change_form()
	return st.stanza("x", { xmlns = "jabber:x:data", type = "form" })
		:text_tag("title", "Password Change")
		:text_tag("instructions", "Log in with your password to change it.")
		:tag("field", { type = "hidden", var = "FORM_TYPE" }):text_tag("value", "jabber:iq:register:changepassword"):up()
		:tag("field", { type = "text-single", label = "Username", var = "username" }):tag("required"):up():up()
		:tag("field", { type = "text-private", label = "Old Password", var = "old_password" }):tag("required"):up():up()
		:tag("field", { type = "text-private", label = "New Password", var = "password" }):tag("required"):up():up();
end

local function guard_registration(event)
	local origin, stanza = event.origin, event.stanza;
	local identity = origin.keystore_cert;
	if not identity or stanza.attr.type ~= "set" then return; end
	local query = stanza.tags[1];
	if query:get_child("remove") then
		if identity.no_cert_management then
			origin.send(st.error_reply(stanza, "auth", "forbidden",
				"This session logged in with a certificate that may not delete the account"));
			return true;
		end
		return;
	end
	local reply = st.error_reply(stanza, "cancel", "not-authorized",
		"Sessions that logged in with a client certificate cannot change the password");
	reply:reset():add_child(st.stanza("query", { xmlns = "jabber:iq:register" }):add_child(password_change_form()));
	origin.send(reply);
	return true;
end

module:hook("iq/self/jabber:iq:register:query", guard_registration, 10);
module:hook("iq/host/jabber:iq:register:query", guard_registration, 10);

------------------------------------------------------------------------------------------------
-- Deleting an account revokes its certificates (else a new account with the same name would
-- inherit them). Pending revocations are stored, so a keystore outage or a restart delays them
-- but never drops them.

local pending_store = module:open_store("keystore_pending_revocations");
local pending = { flushing = false, again = false, timer = nil, failures = 0 };

local function flush_pending_revocations()
	if pending.flushing then pending.again = true; return; end
	pending.flushing = true;
	in_background(function ()
		repeat
			pending.again = false;
			local failed;
			for username in pairs(pending_store:get(nil) or {}) do
				local ok, result = await(client:post(user_path(username, "certs", "revoke-all")));
				if not ok then
					failed = true;
					pending.failures = pending.failures + 1;
					local delay = math.min(300, 2 ^ pending.failures);
					module:log("warn", "Cannot revoke the certificates of deleted account %s@%s (%s); retrying in %ds",
						username, host, keystore.describe_failure(result), delay);
					if not pending.timer then
						pending.timer = module:add_timer(delay, function ()
							pending.timer = nil;
							flush_pending_revocations();
						end);
					end
					break;
				end
				local revoked = type(result.json.certs) == "table" and result.json.certs or {};
				module:log("info", "Revoked %d certificate(s) of deleted account %s@%s", #revoked, username, host);
				for _, entry in ipairs(revoked) do
					if type(entry.fingerprint_sha256) == "string" then
						remember_removed(username .. "@" .. host, entry.fingerprint_sha256);
						close_sessions(entry.fingerprint_sha256, username .. "@" .. host, "revoked");
					end
				end
				local current = pending_store:get(nil) or {};
				current[username] = nil;
				pending_store:set(nil, current);
			end
			if not failed then pending.failures = 0; end
		until failed or not pending.again;
		pending.flushing = false;
	end);
end

module:hook_global("user-deleted", function (event)
	if event.host ~= host then return; end
	local current = pending_store:get(nil) or {};
	current[event.username] = true;
	local ok, err = pending_store:set(nil, current);
	if not ok then
		module:log("error", "Cannot record the pending certificate revocation of %s@%s: %s", event.username, host, tostring(err));
	end
	flush_pending_revocations();
end);

-- Deletions recorded before a restart or an outage.
flush_pending_revocations();
