-- Tests of keystore_client.lib.lua on Prosody's own net.server loop, against a scripted peer on
-- a real Unix socket that dribbles its answers out a few bytes at a time (so every parser state
-- is crossed at an arbitrary boundary). Run: lua5.4 keystore_client_test.lua (exit 0 = passed);
-- ProsodyIntegrationTests runs it under `swift test`.

-- net.server refuses to load outside Prosody; this is the little of Prosody it looks at.
prosody = { config_loaded = true, events = { add_handler = function () end } }; -- luacheck: ignore 111
package.path = "/usr/lib/prosody/?.lua;" .. package.path;
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath;

local server = require "net.server";
local timer = require "util.timer";
local json = require "util.json";
local unix = require "socket.unix";
if type(unix) == "function" then unix = { stream = unix }; end

local here = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/..";
local verbose = os.getenv("VERBOSE") ~= nil;

-- The module API subset the library uses.
local fake_module = {};
function fake_module:log(level, fmt, ...)
	if verbose then print("[" .. level .. "] " .. fmt:format(...)); end
end
function fake_module:add_timer(delay, callback)
	local handle = { stopped = false };
	handle.id = timer.add_task(delay, function (now)
		if handle.stopped then return; end
		return callback(now);
	end);
	function handle:stop() self.stopped = true; timer.stop(self.id); end
	function handle:reschedule(d) timer.reschedule(self.id, d); end
	return handle;
end

local env = setmetatable({ module = fake_module }, { __index = _G });
local keystore = assert(loadfile(here .. "/keystore_client.lib.lua", "t", env))();

local socket_path = os.tmpname();
os.remove(socket_path);

--- A one-shot scripted peer: for each accepted connection, `script(request, send, close)` is
--- called once the request head (and body) arrived.
local requests = {};
local script;
local listener = assert(unix.stream());
assert(listener:bind(socket_path));
assert(listener:listen(16));
listener:settimeout(0);
local peer_listeners, peer_state = {}, {};
function peer_listeners.onconnect(conn)
	peer_state[conn] = { buffer = "", answered = false };
end
function peer_listeners.onincoming(conn, data)
	local state = peer_state[conn];
	if not state or state.answered then return; end
	state.buffer = state.buffer .. data;
	local buffer = state.buffer;
	local head_end = buffer:find("\r\n\r\n", 1, true);
	if not head_end then return; end
	local length = tonumber(buffer:match("[Cc]ontent%-[Ll]ength: *(%d+)")) or 0;
	if #buffer < head_end + 3 + length then return; end
	state.answered = true;
	local request = { line = buffer:match("^[^\r]*"), body = buffer:sub(head_end + 4) };
	requests[#requests + 1] = request;
	-- Dribble: 3 bytes every millisecond.
	local queue, closing = {}, false;
	local function pump()
		if not peer_state[conn] then return; end -- the client went away
		local piece = table.remove(queue, 1);
		if piece then
			conn:write(piece);
			return 0.001;
		elseif closing then
			conn:close();
		else
			return 0.001;
		end
	end
	local function send(text)
		for i = 1, #text, 3 do queue[#queue + 1] = text:sub(i, i + 2); end
	end
	timer.add_task(0, pump);
	script(request, send, function () closing = true; end);
end
function peer_listeners.ondisconnect(conn) peer_state[conn] = nil; end
server.wrapserver(listener, socket_path, 0, peer_listeners);

local function chunked(lines)
	local out = {};
	for _, line in ipairs(lines) do
		out[#out + 1] = ("%x\r\n%s\r\n"):format(#line, line);
	end
	return table.concat(out);
end

local failures, steps = 0, {};
local function check(condition, what)
	if not condition then
		failures = failures + 1;
		print("FAIL: " .. what);
	elseif verbose then
		print("ok: " .. what);
	end
end

local function step(name, run) steps[#steps + 1] = { name = name, run = run }; end

local function run_steps(i)
	local current = steps[i];
	if not current then
		server.setquitting(true);
		return;
	end
	if verbose then print("-- " .. current.name); end
	local finished = false;
	local deadline = timer.add_task(5, function ()
		if not finished then check(false, current.name .. ": finished within 5s"); finished = true; run_steps(i + 1); end
	end);
	current.run(function ()
		if finished then return; end
		finished = true;
		timer.stop(deadline);
		timer.add_task(0, function () run_steps(i + 1); end);
	end);
end

local client = keystore.new(socket_path, { timeout = 0.5, log = function (...) fake_module:log(...) end });

step("a JSON answer with Content-Length, split in 3-byte pieces", function (done)
	script = function (_, send, close)
		local body = json.encode({ jid = "alice@example.org", name = "phone" });
		send("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: " .. #body .. "\r\n\r\n" .. body);
		close();
	end;
	client:post(keystore.path("v1", "domains", "example.org", "sasl-external"), { certificate = "PEM" }):next(function (result)
		check(result.status == 200 and result.json.jid == "alice@example.org", "answer decoded");
		local request = requests[#requests];
		check(request.line == "POST /v1/domains/example.org/sasl-external HTTP/1.1", "request line: " .. request.line);
		check(json.decode(request.body).certificate == "PEM", "request body is the JSON sent");
		done();
	end, function (err)
		check(false, "request failed: " .. keystore.describe_failure(err));
		done();
	end);
end);

step("path segments are percent-encoded", function (done)
	script = function (_, send, close)
		send("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
		close();
	end;
	client:post(keystore.path("v1", "domains", "example.org", "users", "a/b c", "certs", "n%1", "revoke")):next(function ()
		check(requests[#requests].line == "POST /v1/domains/example.org/users/a%2fb%20c/certs/n%251/revoke HTTP/1.1",
			"encoded request line: " .. requests[#requests].line);
		done();
	end, function (err) check(false, keystore.describe_failure(err)); done(); end);
end);

step("an API error becomes a failure table with the stanza error mapping", function (done)
	script = function (_, send, close)
		local body = json.encode({ error = "conflict", message = "name in use" });
		send("HTTP/1.1 409 Conflict\r\ncontent-length: " .. #body .. "\r\n\r\n" .. body);
		close();
	end;
	client:post("/v1/x", {}):next(function ()
		check(false, "a 409 must reject"); done();
	end, function (err)
		check(err.kind == "http" and err.status == 409 and err.code == "conflict" and err.text == "name in use", "409 decoded");
		local etype, condition = keystore.stanza_error(err);
		check(etype == "cancel" and condition == "conflict", "409 is cancel/conflict");
		check(not keystore.is_unavailable(err), "409 is not an outage");
		done();
	end);
end);

step("503 not_ready and an unreachable socket are outages (wait/service-unavailable)", function (done)
	script = function (_, send, close)
		local body = json.encode({ error = "not_ready", message = "catching up" });
		send("HTTP/1.1 503 Service Unavailable\r\ncontent-length: " .. #body .. "\r\n\r\n" .. body);
		close();
	end;
	client:get("/v1/y"):next(nil, function (err)
		check(keystore.is_unavailable(err), "503 is an outage");
		check(select(2, keystore.stanza_error(err)) == "service-unavailable", "503 is service-unavailable");
		keystore.new(socket_path .. ".missing"):get("/v1/z"):next(nil, function (unreachable)
			check(unreachable.kind == "unreachable", "missing socket is unreachable: " .. keystore.describe_failure(unreachable));
			local etype, condition = keystore.stanza_error(unreachable);
			check(etype == "wait" and condition == "service-unavailable", "unreachable is wait/service-unavailable");
			done();
		end);
	end);
end);

step("no answer within the timeout", function (done)
	script = function () end; -- never answers
	client:get("/v1/slow"):next(function ()
		check(false, "must time out"); done();
	end, function (err)
		check(err.kind == "timeout", "timed out: " .. keystore.describe_failure(err));
		done();
	end);
end);

step("a truncated answer is a failure, not a hang", function (done)
	script = function (_, send, close)
		send("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":");
		close();
	end;
	client:get("/v1/truncated"):next(function ()
		check(false, "must fail"); done();
	end, function (err)
		check(err.kind == "unreachable" or err.kind == "protocol", "truncated: " .. keystore.describe_failure(err));
		done();
	end);
end);

step("events: lines across chunk boundaries, resume with ?since=, resync means a gap", function (done)
	local seen, gaps, connection = {}, {}, 0;
	script = function (request, send, close)
		connection = connection + 1;
		send("HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n");
		if connection == 1 then
			check(request.line == "GET /v1/events HTTP/1.1", "first connection has no cursor: " .. request.line);
			-- One line split over two chunks, then two lines in one chunk.
			local revoked = json.encode({ type = "cert_revoked", domain = "example.org", user = "alice@example.org",
				fingerprint_sha256 = "ab", cursor = "i1.2" });
			send(chunked({
				json.encode({ type = "hello", node = "node1", cursor = "i1.1" }) .. "\n",
				revoked:sub(1, 10), revoked:sub(11) .. "\n" .. json.encode({ type = "heartbeat" }) .. "\n"
					.. json.encode({ type = "cert_disabled", domain = "example.org", user = "bob@example.org",
						fingerprint_sha256 = "cd", cursor = "i1.3" }) .. "\n",
			}));
			close(); -- the node goes away
		elseif connection == 2 then
			check(request.line == "GET /v1/events?since=i1.3 HTTP/1.1", "resumes after the last cursor: " .. request.line);
			send(chunked({ json.encode({ type = "hello", node = "node1", cursor = "i2.0" }) .. "\n" }));
			send(chunked({ json.encode({ type = "resync", reason = "restarted", cursor = "i2.0" }) .. "\n" }));
		end
	end;
	local follower;
	follower = client:follow_events({
		on_event = function (event) seen[#seen + 1] = event.type .. ":" .. event.fingerprint_sha256; end;
		on_gap = function (reason)
			gaps[#gaps + 1] = reason;
			if #gaps == 2 then
				check(table.concat(seen, ",") == "cert_revoked:ab,cert_disabled:cd", "events in order: " .. table.concat(seen, ","));
				check(gaps[1] == "first connection", "first connection is a gap: " .. tostring(gaps[1]));
				check(gaps[2]:match("^resync"), "resync is a gap: " .. tostring(gaps[2]));
				follower:stop();
				done();
			end
		end;
	}, { min_backoff = 0.01, max_backoff = 0.05 });
end);

timer.add_task(0, function () run_steps(1); end);
server.loop();
os.remove(socket_path);
if failures > 0 then
	print(("%d check(s) failed"):format(failures));
	os.exit(1);
end
print(("keystore_client.lib.lua: all %d steps passed"):format(#steps));
os.exit(0);
