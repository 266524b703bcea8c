"""The entity's actors; each module holds one (plus its helpers).

Nothing is imported here: a module that needs only the message kinds
(`actors.messages`, entityctl) must not load every actor and the LLM client with them.
"""
