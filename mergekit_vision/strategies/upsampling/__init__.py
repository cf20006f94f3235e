"""Teacher upsamplers: how a task's dense target reaches a finer grid than its teacher's."""
