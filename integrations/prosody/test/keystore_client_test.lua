-- Tests of keystore_client.lib.lua on Prosody's own net.server loop, against a scripted peer on
-- a real Unix socket that dribbles its answers out a few bytes at a time (so every parser state
-- is crossed at an arbitrary boundary). Run: lua5.4 keystore_client_test.lua (exit 0 = passed);
-- ProsodyIntegrationTests runs it under `swift test`.

local h = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua");
local json, check, step = h.json, h.check, h.step;

local fake_module = h.new_module("example.org");
local keystore = h.load(h.directory .. "/keystore_client.lib.lua", fake_module);

local socket_path = h.socket_path();
local peer = h.scripted_peer(socket_path);
local requests = peer.requests;
local script;
function peer.script(...) return script(...); end

local function chunked(lines)
	local out = {};
	for _, line in ipairs(lines) do
		out[#out + 1] = ("%x\r\n%s\r\n"):format(#line, line);
	end
	return table.concat(out);
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

h.run("keystore_client.lib.lua", function () os.remove(socket_path); end);
